"""Unpacking dataset archives and listing image folders, for the datasets that come that way.

Both refuse input that would go wrong silently: an archive member that would land outside the
folder it is extracted into (`../x`, `/etc/x`, any link, a device file), and an image
folder that lacks one of the classes the dataset defines (its labels would all shift by one)."""
from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from ..io import UserError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def _refuse(archive: Path, member: str, why: str) -> UserError:
    return UserError(
        f"{archive}: member '{member}' {why}; nothing was extracted. This is not the dataset's "
        "official archive: delete it and fetch it again from the official URL"
    )


def _escapes(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or bool(path.parts and path.parts[0].endswith(":"))


def _check_zip_member(archive: Path, info: zipfile.ZipInfo) -> None:
    if _escapes(info.filename):
        raise _refuse(archive, info.filename, "would be written outside the target folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise _refuse(archive, info.filename, "is a symbolic link")


def extract(archive: Path, dest: Path) -> list[str]:
    """Extract a tar (any compression) or zip `archive` into the folder `dest`; return the member
    names. Every member is checked before anything is written."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                for info in infos:
                    _check_zip_member(archive, info)
                z.extractall(dest)
                return [i.filename for i in infos]
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                if _escapes(member.name):  # the filter below would strip a leading '/': refuse it instead
                    raise _refuse(archive, member.name, "is refused (it would be written outside the target folder)")
                if member.issym() or member.islnk():
                    # no dataset archive holds links, and a chain of them (a -> ., a/b -> ..) passes a
                    # member-by-member check, escaping only once the first is on disk
                    raise _refuse(archive, member.name, f"is refused (a {'symbolic' if member.issym() else 'hard'} link "
                                  f"to '{member.linkname}'; dataset archives hold none)")
                try:
                    # the rules of Python's "data" filter (PEP 706): no absolute paths, no '..',
                    # no links out of dest, no device files
                    tarfile.data_filter(member, str(dest))
                except tarfile.FilterError as e:
                    raise _refuse(archive, member.name, f"is refused ({type(e).__name__}: {e})") from None
            tar.extractall(dest, filter="data")
            return [m.name for m in members]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise UserError(f"{archive}: cannot be read as a tar or zip archive ({type(e).__name__}: {e}); "
                        "it is truncated or corrupt: delete it and fetch it again") from None


def list_image_folder(root: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(image file, label) for an ImageFolder layout `root/<class>/<image>`; the label is the
    class's index in `classes`. Every class must be there with at least one image: a missing
    class is an error, not a dataset with fewer labels."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found; give the folder that holds one sub-folder per class")
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(
            f"{root}: {len(missing)} of the dataset's {len(classes)} classes have no folder ({shown}); "
            "the labels would not match the dataset's. Restore the missing class folders"
        )
    items = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        items += [(f, label) for f in files]
    return items


def load_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 H x W x 3, its shorter side resized to `size` and centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / min(im.size)
            im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BILINEAR)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except OSError as e:
        raise UserError(f"{path}: not a readable image ({e}); replace the file or remove it from the folder") from None

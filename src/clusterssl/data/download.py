"""Bringing a dataset's raw files in: a local mirror first, then the official location, every
file's checksum verified before anything is kept.

Where a file is looked for, first hit wins:
1. `$CLUSTERSSL_DATA_MIRROR`: a directory or http(s) URL holding the file, under `<dataset>/`
   or directly (one mirror can serve every dataset);
2. the dataset's own local places (e.g. Debian's package for Fashion-MNIST);
3. the official URL, which `$CLUSTERSSL_<DATASET>_URL` replaces (an internal copy, a test server).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

from ..io import UserError, stream_sha256

MIRROR_ENV = "CLUSTERSSL_DATA_MIRROR"


def url_env(dataset: str) -> str:
    return f"CLUSTERSSL_{dataset.upper()}_URL"


def locations(dataset: str, official: str, local_dirs: Iterable[Path] = ()) -> list[str]:
    """Where to look, in order; each is a directory path or an http(s) base URL ending in '/'."""
    out = []
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        if mirror.startswith(("http://", "https://")):
            out += [mirror.rstrip("/") + f"/{dataset}/", mirror.rstrip("/") + "/"]
        else:
            out += [str(Path(mirror) / dataset), mirror]
    out += [str(d) for d in local_dirs]
    out.append(os.environ.get(url_env(dataset), official).rstrip("/") + "/")
    return out


def copy_or_download(location: str, name: str, dest: Path) -> bool:
    """Copy or download `name` from `location` into `dest`; False if it is not there."""
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location + name, timeout=30) as r, open(dest, "wb") as f:
                shutil.copyfileobj(r, f)
            return True
        except (urllib.error.URLError, OSError, TimeoutError):
            return False
    src = Path(location) / name
    if src.is_file():
        shutil.copyfile(src, dest)
        return True
    return False


def shown(origin: str, name: str) -> str:
    return origin + name if origin.endswith("/") else str(Path(origin) / name)


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f, hashlib.md5)


def verify_md5(path: Path, expected: str, shown_as: str) -> None:
    """The check torchvision makes on the official archives (their published MD5)."""
    got = file_md5(path)
    if got != expected:
        raise UserError(
            f"{shown_as}: checksum mismatch (MD5 {got}, expected {expected}); the file is truncated, "
            "corrupt or not the official archive: delete it and fetch again"
        )


def fetch_files(dataset: str, files: dict[str, str], official: str, out_dir: Path,
                verify: Callable[[Path, str, str], None] = verify_md5, local_dirs: Iterable[Path] = (),
                hint: str = "") -> None:
    """Bring every file of `files` (name -> expected checksum) into `out_dir`, verified."""
    tried = locations(dataset, official, local_dirs)
    for name, checksum in files.items():
        dest = out_dir / name
        origin = next((loc for loc in tried if copy_or_download(loc, name, dest)), None)
        if origin is None:
            raise UserError(
                f"{dataset}: file {name} not found in any of: {', '.join(tried)}. Offline? {hint}"
                f"Set {MIRROR_ENV} to a directory (or URL) holding {name}, directly or under {dataset}/."
            )
        verify(dest, checksum, shown(origin, name))

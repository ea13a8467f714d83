"""Archives and image folders: a member escaping the target folder, a missing class, a broken
image are each refused with one clear error, and nothing is extracted."""
from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from clusterssl.data.archives import extract, list_image_folder, load_image
from clusterssl.io import UserError


def _tar(path, members: dict[str, bytes], mode="w:gz", link: tuple[str, str] | None = None):
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tar.addfile(info)
    return path


def test_a_well_formed_tar_and_zip_extract(tmp_path):
    members = {"cifar/data_batch_1": b"abc", "cifar/batches.meta": b"xyz"}
    assert extract(_tar(tmp_path / "a.tar.gz", members), tmp_path / "t") == list(members)
    assert (tmp_path / "t/cifar/data_batch_1").read_bytes() == b"abc"
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("imgs/a.txt", b"1")
    extract(tmp_path / "a.zip", tmp_path / "z")
    assert (tmp_path / "z/imgs/a.txt").read_bytes() == b"1"


@pytest.mark.parametrize(
    "members, link",
    [
        ({"ok/file": b"1", "../escaped": b"2"}, None),
        ({"ok/file": b"1", "ok/../../escaped": b"2"}, None),
        ({"ok/file": b"1", "/tmp/escaped-absolute": b"2"}, None),
        ({"ok/file": b"1"}, ("ok/link", "../../escaped")),
        ({"ok/file": b"1"}, ("ok/link", "/etc/passwd")),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-absolute"],
)
def test_a_tar_member_escaping_its_folder_is_refused_and_nothing_is_extracted(tmp_path, members, link):
    archive = _tar(tmp_path / "evil.tar.gz", members, link=link)
    dest = tmp_path / "deep/dest"
    with pytest.raises(UserError, match=r"evil.tar.gz: member '.*' is refused .*nothing was extracted.*official"):
        extract(archive, dest)
    assert list(dest.iterdir()) == []  # not even the harmless member before it
    assert not (tmp_path / "deep/escaped").exists() and not (tmp_path / "escaped").exists()


def test_a_chain_of_tar_links_is_refused_before_anything_is_extracted(tmp_path):
    # each link alone stays inside the folder; followed one after the other, the last leaves it
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tar:
        for name, target in (("a", "."), ("a/b", ".."), ("a/b/c", "..")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        info = tarfile.TarInfo("a/b/c/escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    dest = tmp_path / "deep/dest"
    with pytest.raises(UserError, match=r"chain.tar: member 'a' is refused \(a symbolic link to '.'; dataset archives hold none\); nothing was extracted"):
        extract(archive, dest)
    assert list(dest.iterdir()) == []


def test_a_zip_member_escaping_its_folder_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("ok.txt", b"1")
        z.writestr("../escaped.txt", b"2")
    with pytest.raises(UserError, match=r"evil.zip: member '../escaped.txt' would be written outside the target folder"):
        extract(tmp_path / "evil.zip", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_a_truncated_archive_is_one_clear_error(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", {"x": bytes(range(256)) * 400})
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(UserError, match=r"a.tar.gz: cannot be read as a tar or zip archive .*truncated or corrupt"):
        extract(archive, tmp_path / "dest")


def _image_folder(root, classes, per_class=2):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 20, 3), 40 * i, np.uint8)).save(root / c / f"{i}.JPEG")
    return root


def test_image_folder_lists_files_with_the_datasets_label_order(tmp_path):
    root = _image_folder(tmp_path / "train", ["n02", "n01"])
    items = list_image_folder(root, ["n01", "n02"])
    assert [(p.parent.name, label) for p, label in items] == [("n01", 0), ("n01", 0), ("n02", 1), ("n02", 1)]
    image = load_image(items[2][0], 8)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and image.max() == 0


def test_image_folder_with_a_missing_class_is_refused(tmp_path):
    root = _image_folder(tmp_path / "train", ["n01", "n03"])
    with pytest.raises(UserError, match=r"train: 1 of the dataset's 3 classes have no folder \(n02\).*Restore"):
        list_image_folder(root, ["n01", "n02", "n03"])
    (root / "n02").mkdir()
    with pytest.raises(UserError, match=r"n02: class folder holds no images"):
        list_image_folder(root, ["n01", "n02", "n03"])
    with pytest.raises(UserError, match=r"image folder not found"):
        list_image_folder(tmp_path / "nowhere", ["n01"])


def test_a_broken_image_is_named(tmp_path):
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match=r"bad.JPEG: not a readable image"):
        load_image(bad, 8)

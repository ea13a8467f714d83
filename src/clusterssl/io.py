"""Atomic file output: every stage writes to a temporary name and renames on success,
so an interrupted or failed stage never leaves a partial output behind."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


class UserError(Exception):
    """An error the user can fix (bad params, missing data, corrupt archive, wrong checkpoint).

    The CLI prints the message alone (no traceback) and exits with `exit_status`."""

    exit_status = 2


class Preempted(UserError):
    """Stopped by SIGTERM (a scheduler's preemption) after saving what a re-run resumes from."""

    exit_status = 143  # 128 + SIGTERM, what the shell reports for a process SIGTERM killed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs normal permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found; run the stage that produces it first")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); delete it and run the stage that produces it again") from None


def stream_sha256(f, algorithm=hashlib.sha256) -> str:
    """SHA-256 (or `algorithm`) of what a binary file object yields, read in 1 MiB chunks."""
    h = algorithm()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)

"""Atomic file output: every stage writes to a temporary name and renames on success,
so an interrupted or failed stage never leaves a partial output behind. A temporary's name
carries its writer's PID, and a folder lock keeps a second writer out of a folder in use."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
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


def temporary_suffix() -> str:
    """How the name of every temporary this process writes ends: `.<its PID>.tmp`, so that a
    start-up cleanup tells a dead writer's leftover from a live writer's file mid-write."""
    return f".{os.getpid()}.tmp"


def temporary_writer(path: str | os.PathLike) -> int | None:
    """The PID in a temporary's name (None: a name without one, from before names carried it)."""
    parts = Path(path).name.split(".")
    return int(parts[-2]) if len(parts) > 3 and parts[-1] == "tmp" and re.fullmatch(r"[0-9]+", parts[-2]) else None


def process_running(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (another user's included)."""
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists is checked
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=temporary_suffix(), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs normal permissions
        os.replace(tmp, path)
    except OSError as exc:
        raise naming(exc, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def naming(exc: OSError, path: Path) -> OSError:
    """`exc`, naming the output `path` where it names no file (a write through a file object
    says "No space left on device" and nothing else)."""
    if exc.filename is None:
        exc.filename = str(path)
    return exc


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=temporary_suffix(), dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        swap_in(tmp, path)
    except OSError as exc:
        raise naming(exc, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def swap_in(new: Path, path: Path) -> None:
    """Puts the folder `new` in place of the folder `path`: the old one is renamed aside, the new
    one renamed in, and only then is the old one deleted. A kill at any moment leaves the old
    folder or the new one whole, at `path` or (between the two renames) under its temporary name,
    never one half deleted at `path`."""
    if not path.exists():
        os.replace(new, path)
        return
    suffix = temporary_suffix()
    aside = new.with_name(new.name.removesuffix(suffix) + ".old" + suffix)
    os.replace(path, aside)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside, path)  # the old folder goes back where it was
        raise
    shutil.rmtree(aside, ignore_errors=True)  # the new folder is in place: what is left is a temporary


def remove_stale_temporaries(folder: Path, pattern: str = ".*.tmp") -> None:
    """Temporaries that killed writes left behind: those of processes that no longer run, of this
    process's PID (a killed run's, whose PID a restarted container gives again) and those whose
    name has no PID (from before names carried one). A live process's file mid-write stays.
    `pattern` narrows it to one output's temporaries (the report's, in a folder others write)."""
    for tmp in Path(folder).glob(pattern):
        writer = temporary_writer(tmp)
        if writer is not None and writer != os.getpid() and process_running(writer):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


# --- one writer per folder ------------------------------------------------------------------------
LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[Path]:
    """An exclusive lock on `folder` while the block runs, so that no two processes write it at
    once: flock on its file LOCK_NAME, which records the holder's PID, host and `command` for the
    error a second process gets at once. The kernel drops a flock when its process dies, so a
    killed holder never blocks the next one; the file goes when the block ends."""
    lock = Path(folder) / LOCK_NAME
    fd = _take_lock(lock)
    try:
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command}).encode())
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # while still held: a process that opened this file finds it gone and retries
        os.close(fd)


def _take_lock(lock: Path) -> int:
    """An empty file descriptor of `lock` that holds its flock; UserError if another process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{lock.parent} is in use by {_lock_holder(lock)}; wait for it or stop it") from None
        if _is_file_at(fd, lock):
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)  # its holder deleted it between our open and our flock: lock the file there now


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def _lock_holder(lock: Path) -> str:
    """'process PID on HOST (COMMAND)', as the lock file records it."""
    for _ in range(20):  # its holder writes it just after taking the lock
        try:
            holder = json.loads(lock.read_text())
            return f"process {holder['pid']} on {holder['host']} ({holder['command']})"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return f"another process (its lock file {lock} does not say which)"


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

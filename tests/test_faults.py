"""Faults of the machine rather than of the input, with real processes and real file systems: a
report killed mid-build, a full disk, a read-only results folder. Each must end in one line on
stderr (exit 1 for the environment), no traceback, and the previous outputs whole or absent.

The full and read-only disks are small tmpfs mounts: they need root (as CI runs) and are skipped
elsewhere."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import BIN, ENV, preset_in

CLUSTERSSL = [sys.executable, "-m", "clusterssl.cli"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (hidden ones included)."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def one_line_error(run: subprocess.CompletedProcess, status: int) -> str:
    assert run.returncode == status, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("clusterssl: error:")]
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a folder on a tmpfs of that many KiB; unmounted at the end."""
    mounted: list[Path] = []

    def mount(kib: int, name: str = "disk") -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        where = tmp_path / name
        where.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True).returncode:
            pytest.skip("this machine does not allow mounting a tmpfs")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def copy_run(source: Path, dest: Path) -> Path:
    """tiny_local_run's data and results under `dest`, with a params file pointing there."""
    shutil.copytree(source / "data", dest / "data", symlinks=True)
    shutil.copytree(source / "results", dest / "results", symlinks=True)
    return preset_in(dest, name="report-params.yaml", methods=["carl"])


REFERENCE = Path(__file__).resolve().parents[1] / "reference/reported_numbers.csv"


def report(params: Path, reference: Path = REFERENCE) -> subprocess.CompletedProcess:
    return subprocess.run([*CLUSTERSSL, "--params", str(params), "report", "--reference", str(reference)],
                          capture_output=True, text=True, env=ENV, cwd=params.parent)


def other_reference(tmp_path: Path) -> Path:
    """The published numbers with one value changed, so a new report differs from the old one."""
    ref = REFERENCE.read_text().splitlines()
    header, first, *rest = ref
    cells = first.split(",")
    value = next(i for i, c in enumerate(cells) if c.replace(".", "", 1).isdigit())
    cells[value] = str(float(cells[value]) + 1.25)
    f = tmp_path / "other_reference.csv"
    f.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    return f


@pytest.mark.e2e
def test_a_report_killed_mid_build_leaves_the_previous_report_whole(tmp_path, tiny_local_run):
    params = copy_run(tiny_local_run, tmp_path)
    results = tmp_path / "results"
    assert report(params).returncode == 0
    old = tree(results / "report")
    ref = other_reference(tmp_path)
    proc = subprocess.Popen([*CLUSTERSSL, "--params", str(params), "report", "--reference", str(ref)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    # kill it once it has written its first table, wherever it writes it
    deadline = time.monotonic() + 120
    first_table = lambda: [f for f in results.glob("**/tables/scorecard.md") if f.read_bytes() != old["tables/scorecard.md"]]
    while not first_table() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (results / "report").is_dir()
    killed = tree(results / "report")
    assert report(params, ref).returncode == 0
    new = tree(results / "report")
    assert new != old
    assert killed in (old, new), "the killed report mixed new and old files"
    assert temporaries(results) == [], "the next report removes what a killed one left"


@pytest.mark.e2e
def test_a_full_disk_during_the_report_is_one_line_and_keeps_the_previous_report(tmp_path, tiny_local_run, tmpfs):
    source = tmp_path / "source"
    params = copy_run(tiny_local_run, source)
    assert report(params).returncode == 0
    need = sum(f.stat().st_size for f in (source / "results").rglob("*") if f.is_file())
    disk = tmpfs(2 * need // 1024 + 1024)  # room for the results; the filler below takes the rest
    shutil.copytree(source / "results", disk / "results", symlinks=True)
    params = preset_in(tmp_path, name="full-disk-params.yaml", methods=["carl"],
                       paths={"data": str(source / "data"), "results": str(disk / "results")})
    old = tree(disk / "results/report")
    filler = disk / "filler"
    with open(filler, "wb") as f:  # fill what is left but a few KiB: the report's tables fit, its figures do not
        free = shutil.disk_usage(disk).free
        f.write(b"\0" * max(0, free - 24 * 1024))
    line = one_line_error(report(params, other_reference(tmp_path)), 1)
    assert "no space left" in line
    assert tree(disk / "results/report") == old
    assert temporaries(disk / "results") == []


def test_a_read_only_results_folder_is_one_line_exit_1(tmp_path, tmpfs):
    disk = tmpfs(1024)
    (disk / "results").mkdir()
    remount_read_only(disk)
    params = preset_in(tmp_path, paths={"data": str(tmp_path / "data"), "results": str(disk / "results")})
    run = lambda *argv: subprocess.run([*CLUSTERSSL, "--params", str(params), *argv], capture_output=True, text=True,
                                       env=ENV, cwd=tmp_path)
    assert run("data", "fetch", "digits").returncode == 0
    assert run("data", "prepare", "digits").returncode == 0
    line = one_line_error(run("embed", "--method", "raw_pixels", "--seed", "0"), 1)
    assert str(disk / "results") in line and "cannot be written" in line


def test_a_full_disk_during_pretraining_is_one_line_exit_1_and_leaves_no_partial_file(tmp_path, tmpfs):
    disk = tmpfs(48)  # the run's config and history fit, its weights do not
    params = preset_in(tmp_path, paths={"data": str(tmp_path / "data"), "results": str(disk / "results")})
    run = lambda *argv: subprocess.run([*CLUSTERSSL, "--params", str(params), *argv], capture_output=True, text=True,
                                       env=ENV, cwd=tmp_path)
    assert run("data", "fetch", "digits").returncode == 0
    assert run("data", "prepare", "digits").returncode == 0
    line = one_line_error(run("pretrain", "--method", "simclr", "--seed", "0", "--no-progress"), 1)
    assert "no space left" in line and str(disk / "results") in line
    assert temporaries(disk) == []
    assert not list(disk.rglob("checkpoint.pt"))

"""One writer per folder: a second `clusterssl pretrain` on a run folder in use stops at once,
naming the first, which ends with its own result; temporaries carry their writer's PID, and the
start-up cleanup removes only those of processes that no longer run; a folder that atomic_dir
swaps in is whole, old or new, whenever the swap is killed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from clusterssl import paths, train
from clusterssl.cli import main
from clusterssl.io import LOCK_NAME, UserError, atomic_dir, atomic_path, file_sha256, folder_lock, temporary_writer
import test_train

tiny = test_train.tiny  # test_train.py's fixture: params and prepared digits for a tiny run


def _wait_for_lock_and_resume_point(proc: subprocess.Popen, run: Path) -> None:
    """Until `proc` holds the run folder's lock and has saved a resume point."""
    while True:
        assert proc.poll() is None, f"pretraining ended before it could be caught running: {proc.communicate()[1]}"
        try:
            holder = json.loads((run / LOCK_NAME).read_text())
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid") == proc.pid and (run / "resume.pt").exists():
            return
        time.sleep(0.01)


def test_a_second_pretrain_on_a_folder_in_use_stops_at_once_and_the_first_keeps_its_result(tiny, tmp_path, capsys):
    run = paths.run_dir(tiny, "carl", 0)
    first_params, second_params = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first_params.write_text(yaml.safe_dump({**tiny, "pretrain": {**tiny["pretrain"], "epochs": 4}}))
    second_params.write_text(yaml.safe_dump(tiny))  # other params (2 epochs), the same run folder
    first = subprocess.Popen(test_train._pretrain_cmd(first_params), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock_and_resume_point(first, run)
        first.send_signal(signal.SIGSTOP)  # it holds the lock however long the second takes to start
        live_resume_point = file_sha256(run / "resume.pt")
        # the second in this process (another PID, no second start-up of torch to wait for)
        assert main([str(arg) for arg in test_train._pretrain_cmd(second_params)[1:]]) == 2
        assert capsys.readouterr().err == (f"clusterssl: error: {run} is in use by process {first.pid} on "
                                           f"{socket.gethostname()} (clusterssl pretrain); wait for it or stop it\n")
        assert file_sha256(run / "resume.pt") == live_resume_point  # the first's resume point, untouched
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    finally:
        first.kill()  # only if the test failed before the first ended
    assert first.returncode == 0, err
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2, 3, 4]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["config"]["pretrain"]["epochs"] == 4
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "history.csv"]  # lock released


def test_the_start_up_cleanup_keeps_a_live_processs_temporary_and_removes_dead_ones(tiny):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = os.getppid()  # pytest's parent: another process that runs
    run = paths.run_dir(tiny, "carl", 0)
    run.mkdir(parents=True)
    # this process's own: a killed run's, whose PID a restarted container gives again; no PID: from before PIDs
    removed = [f".x.{dead.pid}.tmp", f".history.csv.a1b2.{os.getpid()}.tmp", ".history.csv.leftover.tmp"]
    kept = [f".x.{live}.tmp"]
    for name in kept + removed:
        (run / name).write_text("mid-write")
    for folder in (f".report.abc123.{live}.tmp", f".prepared.xyz.{dead.pid}.tmp"):  # atomic_dir's
        (run / folder).mkdir()
    kept.append(f".report.abc123.{live}.tmp")
    tiny["pretrain"]["epochs"] = 1
    train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    assert sorted(p.name for p in run.glob(".*")) == sorted(kept)


def test_temporaries_carry_their_writers_pid(tmp_path):
    with atomic_path(tmp_path / "metrics.json") as tmp:
        assert tmp.name.startswith(".metrics.json.") and temporary_writer(tmp) == os.getpid()
    with atomic_dir(tmp_path / "report") as tmp:
        assert tmp.name.startswith(".report.") and temporary_writer(tmp) == os.getpid()
    assert temporary_writer(tmp_path / ".x.123.tmp") == 123 and temporary_writer(tmp_path / ".x.tmp") is None
    assert temporary_writer(tmp_path / "x.123.tmp.json") is None


def test_a_folder_lock_names_its_holder_and_goes_when_released(tmp_path):
    with folder_lock(tmp_path, "clusterssl pretrain") as lock:
        assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname(), "command": "clusterssl pretrain"}
        with pytest.raises(UserError, match=rf"^{tmp_path} is in use by process {os.getpid()} on .* \(clusterssl pretrain\); "
                                            "wait for it or stop it$"):
            with folder_lock(tmp_path, "clusterssl pretrain"):
                pass
    assert not lock.exists()
    # a killed holder's lock file stays, but the kernel dropped its lock: the next process takes it
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "clusterssl pretrain"}))
    with folder_lock(tmp_path, "clusterssl pretrain"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


# --- atomic_dir, killed at each step of the swap -------------------------------------------------------
KILLED_SWAP = """
import os, shutil, sys
from clusterssl import io

point, rename, rmtree = sys.argv[2], os.replace, shutil.rmtree
calls = []

def replace(src, dst):  # the first rename moves the old folder aside, the second the new one in
    calls.append(src)
    if (point, len(calls)) in (("moving the old aside", 1), ("moving the new in", 2)):
        os._exit(9)  # as a SIGKILL: no cleanup runs
    rename(src, dst)

def half_rmtree(path, **kw):
    if point == "deleting the old" and "report" in os.path.basename(path):
        os.remove(os.path.join(path, "a"))
        os._exit(9)
    rmtree(path, **kw)

os.replace, shutil.rmtree = replace, half_rmtree
with io.atomic_dir(sys.argv[1]) as tmp:
    for name in ("c", "d"):
        (tmp / name).write_text("new")
"""


@pytest.mark.parametrize("point", ["moving the old aside", "moving the new in", "deleting the old"])
def test_a_folder_swap_killed_at_any_step_leaves_the_old_or_the_new_one_whole(tmp_path, point):
    target = tmp_path / "report"
    target.mkdir()
    for name in ("a", "b"):
        (target / name).write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(target), point], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    contents = {p.name: sorted(f.name for f in p.iterdir()) for p in tmp_path.iterdir()}
    whole = {"old": ["a", "b"], "new": ["c", "d"]}
    if target.exists():  # what is at the target is one whole folder, old or new
        assert contents.pop("report") in whole.values()
    else:  # killed between the two renames: both whole, under temporary names
        assert sorted(contents.values()) == [whole["old"], whole["new"]]
    assert all(name.endswith(".tmp") and temporary_writer(name) for name in contents)  # the rest: temporaries


def test_a_folder_swap_replaces_the_old_one_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "report"
    for text in ("old", "new"):
        with atomic_dir(target) as tmp:
            (tmp / text).write_text(text)
    assert [p.name for p in tmp_path.iterdir()] == ["report"] and [p.name for p in target.iterdir()] == ["new"]
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:  # a failed stage keeps the previous folder
        (tmp / "half").write_text("")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["report"] and [p.name for p in target.iterdir()] == ["new"]

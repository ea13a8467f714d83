"""Shared fixtures: tiny fake Fashion-MNIST archives, an offline download environment, and a
params file whose output paths point into tmp_path. Nothing here touches the project's own
data/, results/ or exp/ directories."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

torch.set_num_threads(1)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS_YAML = PROJECT_ROOT / "params.yaml"

FMNIST_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x00000800 + ndim, one big-endian uint32 per dim."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_gz(path: Path, raw: bytes) -> Path:
    """gzip `raw` with a fixed 10-byte header (no file name, mtime 0), so byte offsets are known."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, mtime=0))
    return path


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    return write_gz(path, idx_bytes(array))


def make_fake_fmnist(directory: Path, n_train: int = 30, n_test: int = 20, seed: int = 0) -> dict:
    """Write the four Fashion-MNIST archives (small, compressible images) into `directory`;
    return the arrays and the SHA-256 of each file's decompressed content."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": (rng.integers(0, 4, (n_train, 28, 28)) * 60).astype(np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": (rng.integers(0, 4, (n_test, 28, 28)) * 60).astype(np.uint8),
        "t10k-labels-idx1-ubyte.gz": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    sha = {}
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        write_gz(directory / name, raw)
        sha[name] = hashlib.sha256(raw).hexdigest()
    return {"dir": directory, "arrays": arrays, "sha": sha}


@pytest.fixture
def offline_fmnist_env(tmp_path, monkeypatch):
    """No Debian package, no network (port 9 on localhost refuses at once), no proxy, no mirror."""
    from clusterssl.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-such-debian-dir")
    monkeypatch.setenv("CLUSTERSSL_FASHION_MNIST_URL", "http://127.0.0.1:9/")
    monkeypatch.delenv("CLUSTERSSL_DATA_MIRROR", raising=False)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def fake_fmnist(tmp_path, offline_fmnist_env, monkeypatch):
    """Fake archives in tmp_path/mirror, CLUSTERSSL_DATA_MIRROR pointing there, FILES patched to
    their checksums."""
    from clusterssl.data import fashion_mnist

    fake = make_fake_fmnist(tmp_path / "mirror")
    monkeypatch.setattr(fashion_mnist, "FILES", dict(fake["sha"]))
    monkeypatch.setenv("CLUSTERSSL_DATA_MIRROR", str(fake["dir"]))
    return fake


def hidden_entries(directory: Path) -> list[str]:
    """Leftover temporary files/dirs of io.atomic_* (their names start with a dot)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def all_files(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(p for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def base_params(tmp_path) -> dict:
    """The project's params.yaml with paths.data / paths.results moved into tmp_path."""
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    return params


@pytest.fixture
def write_params(tmp_path, base_params):
    """write_params(modify=None, name=...) -> path of a params file; `modify(params)` edits a copy."""

    def _write(modify=None, name: str = "params.yaml") -> Path:
        params = copy.deepcopy(base_params)
        if modify is not None:
            modify(params)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    return _write


@pytest.fixture
def tiny_backbone():
    from clusterssl.backbones import create_backbone

    def _make():
        torch.manual_seed(0)
        return create_backbone({"name": "resnet18", "layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8], "stem": "cifar"}, in_chans=1)

    return _make


@pytest.fixture
def method_params() -> dict:
    """params.yaml's method_params (every registered method's), with projector/prototype sizes shrunk for speed."""
    from clusterssl.config import load_params

    mp = load_params(PARAMS_YAML)["method_params"]
    for cfg in mp.values():
        cfg["projector_hidden"], cfg["projector_out"] = 16, 8
    mp["carl"]["num_prototypes"] = 10
    return mp


# --- the workflow end to end (tests/test_workflow.py, tests/test_slurm.py) ---------------------------
ROOT = PROJECT_ROOT
# the tiny preset transfers digits -> Fashion-MNIST: the real files, from Debian's package or a mirror
needs_fashion_mnist = pytest.mark.skipif(
    not (Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists() or os.environ.get("CLUSTERSSL_DATA_MIRROR")),
    reason="Fashion-MNIST not available offline: `apt-get install -y dataset-fashion-mnist` (as root) or set CLUSTERSSL_DATA_MIRROR",
)
BIN = Path(sys.executable).parent
# the rules call `clusterssl` from PATH: make it this interpreter's, activated venv or not
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
# one method keeps the end-to-end runs short; the override also proves --config reaches the jobs
TINY_OVERRIDE = ("--config", "methods=[carl]")


def preset_params(preset: str) -> dict:
    """A preset merged onto params.yaml, as `snakemake --configfile` and `clusterssl --preset`
    merge it (not yet completed nor validated)."""
    from clusterssl.config import merge

    return merge(yaml.safe_load(PARAMS_YAML.read_text()), yaml.safe_load((ROOT / "config/presets" / f"{preset}.yaml").read_text()))


def preset_in(tmp: Path, preset: str = "tiny", name: str = "params.yaml", **overrides) -> Path:
    """A preset's params (merged onto params.yaml) with its data and results inside `tmp`, written
    to tmp/name; `a__b=v` sets params[a][b] = v."""
    params = preset_params(preset)
    params["paths"] = {"data": str(tmp / "data"), "results": str(tmp / "results")}
    for key, value in overrides.items():
        *sections, last = key.split("__")
        d = params
        for section in sections:
            d = d[section]
        d[last] = value
    f = tmp / name
    f.write_text(yaml.safe_dump(params))
    return f


def checkout_copy(dest: Path) -> Path:
    """What the workflow reads from its checkout (the Snakefile, its rules and the reference numbers),
    copied to `dest`: a clone somewhere else."""
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "reference"):
        shutil.copytree(ROOT / folder, dest / folder)
    return dest


def snakemake(workdir: Path, params: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # a workdir that is a copy of the checkout (checkout_copy) runs its own Snakefile, as a user in a clone does
    snakefile = workdir / "Snakefile" if (workdir / "Snakefile").is_file() else ROOT / "Snakefile"
    run = subprocess.run(
        [BIN / "snakemake", "-s", snakefile, "-d", workdir, "--configfile", params, *args],
        capture_output=True, text=True, env=env or ENV,
    )
    if run.returncode:
        pytest.fail(f"snakemake {' '.join(map(str, args))} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return run


# tiny_local_run's results folder: a space and a command substitution in its name, which every job
# must take as part of the name (the rules quote what they put into their shell commands)
TINY_RESULTS = "my results $(touch PWNED)"


def tiny_params(workdir: Path, name: str = "params.yaml", **overrides) -> Path:
    """preset_in for tiny_local_run's workdir: its results in TINY_RESULTS."""
    return preset_in(workdir, name=name, paths__results=str(workdir / TINY_RESULTS), **overrides)


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory) -> Path:
    """The tiny preset (CARL only) run once on this machine; tests that compare against it share it.
    It runs as a user would, from a clone (checkout_copy) whose path has a space, and writes its
    results into TINY_RESULTS; `results` links there, so that tests read them as workdir/results."""
    workdir = checkout_copy(tmp_path_factory.mktemp("tiny_local") / "clusterssl checkout")
    (workdir / "results").symlink_to(TINY_RESULTS)
    snakemake(workdir, tiny_params(workdir), *TINY_OVERRIDE, "--cores", "2", "-q")
    return workdir


def run_params_file(workdir: Path) -> Path:
    """The merged params file of tiny_local_run: the first written in its results folder (later
    invocations with other configs add their own files beside it; the same config reuses it)."""
    return min((workdir / "results/params").glob("*.yaml"), key=lambda f: f.stat().st_mtime)


def metrics_of(workdir: Path) -> dict:
    """Every metrics file of a run, without its wall time: what must not depend on where it ran."""
    out = {}
    for f in sorted((workdir / "results/metrics").rglob("*.json")):
        record = json.loads(f.read_text())
        record.pop("seconds", None)
        out[str(f.relative_to(workdir))] = record
    return out


def read_curves(folder: Path) -> dict:
    """dvclive's curves in a run's live `folder` (paths.live_dir): {metric: its rows (step, value)
    as a DataFrame}."""
    import pandas as pd

    from clusterssl import live

    return {f.stem: pd.read_csv(f, sep="\t") for f in sorted((folder / live.CURVES).glob("*.tsv"))}

"""Cluster execution: the tiny preset through `snakemake --profile profiles/slurm` on a real
single-node SLURM cluster (.ci/slurm-cluster), every job submitted with sbatch. Needs root and
Debian's slurm-wlm + munge; skipped otherwise (set CLUSTERSSL_REQUIRE_SLURM=1 to fail instead, as
CI does)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from clusterssl import paths
from conftest import ROOT, TINY_OVERRIDE, metrics_of, needs_fashion_mnist, preset_in, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, needs_fashion_mnist]
CLUSTER = ROOT / ".ci/slurm-cluster"
PROFILE = ROOT / "profiles/slurm"


def _cannot_start() -> str | None:
    if os.geteuid() != 0:
        return "SLURM: starting slurmctld/slurmd needs root"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        return f"SLURM: {', '.join(missing)} not installed (`apt-get install -y slurm-wlm munge`)"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """Starts the cluster with the given options (`.ci/slurm-cluster start ...`); stops it after."""
    if reason := _cannot_start():
        if os.environ.get("CLUSTERSSL_REQUIRE_SLURM"):
            pytest.fail(reason)
        pytest.skip(reason)

    def start(*options: str) -> None:
        subprocess.run([CLUSTER, "start", *options], check=True, capture_output=True, text=True)

    yield start
    subprocess.run([CLUSTER, "stop"], check=False)


def submitted(log: str) -> dict[str, str]:
    """Snakemake job id -> SLURM job id, from the executor's log."""
    return dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))


def test_tiny_through_sbatch_equals_the_local_run(tmp_path, slurm_cluster, tiny_local_run):
    slurm_cluster()
    run = snakemake(tmp_path, preset_in(tmp_path), *TINY_OVERRIDE, "--profile", PROFILE)
    log = run.stdout + run.stderr
    jobs = submitted(log)
    scheduled = re.findall(r"^rule (\w+):", log, flags=re.M)  # `localrule` would mean not submitted
    assert "localrule" not in re.sub(r"localrule all:", "", log)
    assert len(jobs) == len(scheduled) > 20, log[-3000:]
    print(f"sbatch job ids: {sorted(jobs.values(), key=int)}")
    # CPU training is deterministic: the cluster computes the same numbers as this machine
    assert metrics_of(tmp_path) == metrics_of(tiny_local_run)
    table = lambda workdir: pd.read_csv(workdir / "results/report/tables/main.csv").filter(regex="^(?!pretrain_minutes)")
    pd.testing.assert_frame_equal(table(tmp_path), table(tiny_local_run))  # all but the wall times


def test_requests_larger_than_the_nodes_are_lowered_to_them(tmp_path, slurm_cluster):
    """Another partition name, 1 CPU and 3 GB per node: pretraining asks for 8 CPUs and 8 GB."""
    slurm_cluster("--partition", "small", "--cpus", "1", "--mem-mb", "3000")
    params = preset_in(tmp_path)
    checkpoint = paths.run_files(yaml.safe_load(params.read_text()), "carl", 0)[0]
    run = snakemake(tmp_path, params, *TINY_OVERRIDE, "--profile", PROFILE,
                    "--default-resources", "slurm_partition=small", "runtime=10", "--", str(checkpoint))
    log = run.stdout + run.stderr
    assert "rule pretrain asks for threads 8 but the largest node of partition 'small' (sinfo) has 1" in log, log[-3000:]
    assert "rule pretrain asks for mem_mb 8000 but the largest node of partition 'small' (sinfo) has 3000" in log
    assert re.search(r"clusterssl --params \S+ pretrain --method carl --seed 0 --threads 1 ", log)
    assert submitted(log) and checkpoint.exists()

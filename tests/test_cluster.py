"""Fitting the rules' requests to a cluster's nodes (clusterssl.cluster), without a cluster."""
from __future__ import annotations

import pytest

from clusterssl import cluster

SINFO = """\
debug* 2 23593
gpu 32 256000
gpu 64+ 512000
small 1 3000
"""


def test_parse_sinfo_picks_the_largest_node_of_the_partition():
    assert cluster.parse_sinfo(SINFO, None) == cluster.NodeLimits(2, 23593, "partition 'debug' (sinfo)")
    assert cluster.parse_sinfo(SINFO, "gpu") == cluster.NodeLimits(64, 512000, "partition 'gpu' (sinfo)")
    assert cluster.parse_sinfo(SINFO, "small").cpus == 1
    assert cluster.parse_sinfo(SINFO, "nope") is None
    assert cluster.parse_sinfo("gpu 8 1000\n", None) is None  # no default partition


def test_allocation_limits_read_the_job_environment():
    assert cluster.allocation_limits({}) is None
    assert cluster.allocation_limits({"SLURM_CPUS_PER_TASK": "3", "SLURM_MEM_PER_NODE": "4000"}) == cluster.NodeLimits(
        3, 4000, "this SLURM job's allocation"
    )
    assert cluster.allocation_limits({"SLURM_CPUS_PER_TASK": "3"}).cpus == 3


def test_fit_lowers_requests_to_the_node_and_says_which_setting(capsys):
    node = cluster.NodeLimits(2, 3000, "partition 'small' (sinfo)")
    assert cluster.fit("pretrain", "threads", 8, None, "set-threads: pretrain") == 8  # local: Snakemake caps at --cores
    assert cluster.fit("embed", "threads", 2, node, "set-threads: embed") == 2
    assert cluster.fit("pretrain", "threads", 8, node, "set-threads: pretrain") == 2
    assert cluster.fit("pretrain", "mem_mb", 8000, node, "set-resources: pretrain: mem_mb") == 3000
    err = capsys.readouterr().err
    assert "rule pretrain asks for threads 8 but the largest node of partition 'small' (sinfo) has 2" in err
    assert "set `set-resources: pretrain: mem_mb` in the profile" in err
    # inside the job the allocation is the limit, silently: it is what the main process asked for
    job = cluster.NodeLimits(2, 3000, "this SLURM job's allocation")
    assert cluster.fit("report", "threads", 4, job, "set-threads: report") == 2
    assert capsys.readouterr().err == ""


def test_local_runs_have_no_limits_and_a_missing_sinfo_is_a_clear_error(monkeypatch):
    assert cluster.limits_for(None, None) is None
    assert cluster.limits_for("local", None) is None
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    cluster.slurm_node_limits.cache_clear()
    with pytest.raises(cluster.UserError, match="sinfo"):
        cluster.limits_for("slurm", "debug")

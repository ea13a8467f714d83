"""What a job may ask of the machine that runs it: the workflow's rules state what they would like
(threads, memory, GPUs) and this module fits that to the cluster's nodes, so the same rules run on
a laptop, a GPU workstation and a SLURM cluster whose nodes are smaller than the request.

Snakemake evaluates a rule's resources twice under SLURM: in the main process, which submits with
sbatch (the limits are the nodes of the partition, from `sinfo`), and in the job itself (the limits
are the allocation SLURM gave it, from its environment). Both must agree, or the job would run more
threads than the CPUs it holds."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

from .io import UserError


@dataclass(frozen=True)
class NodeLimits:
    cpus: int
    mem_mb: int
    where: str  # for messages: "partition 'debug' (sinfo)" or "this SLURM job's allocation"


def parse_sinfo(text: str, partition: str | None) -> NodeLimits | None:
    """The largest node of `partition` (or of the default partition, marked '*', when None) in the
    output of `sinfo --noheader --format '%P %c %m'` (partition, CPUs per node, memory MB per node).
    None when the partition is not in the output."""
    best = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        name, cpus, mem = fields
        is_default = name.endswith("*")
        name = name.rstrip("*")
        if (partition is None and not is_default) or (partition is not None and name != partition):
            continue
        cpus, mem = int(cpus.rstrip("+")), int(mem.rstrip("+"))
        if best is None or (cpus, mem) > (best.cpus, best.mem_mb):
            best = NodeLimits(cpus, mem, f"partition '{name}' (sinfo)")
    return best


def allocation_limits(environ=os.environ) -> NodeLimits | None:
    """The CPUs and memory SLURM allocated to the job this process runs in (None outside a job)."""
    cpus = environ.get("SLURM_CPUS_PER_TASK")
    if cpus is None:
        return None
    mem = environ.get("SLURM_MEM_PER_NODE")
    return NodeLimits(int(cpus), int(mem) if mem else sys.maxsize, "this SLURM job's allocation")


@cache
def slurm_node_limits(partition: str | None) -> NodeLimits:
    if shutil.which("sinfo") is None:
        raise UserError("the SLURM executor is selected but `sinfo` is not on PATH: run Snakemake on a SLURM login node")
    out = subprocess.run(["sinfo", "--noheader", "--format", "%P %c %m"], capture_output=True, text=True)
    limits = parse_sinfo(out.stdout, partition) if out.returncode == 0 else None
    if limits is None:
        which = f"partition '{partition}'" if partition else "a default partition"
        raise UserError(
            f"SLURM: sinfo lists no nodes for {which} ({out.stderr.strip() or out.stdout.strip() or 'empty output'}); "
            "set `slurm_partition` under `default-resources` in your profile to one of `sinfo --summarize`'s partitions"
        )
    return limits


def limits_for(executor: str | None, partition: str | None) -> NodeLimits | None:
    """The node limits a job must fit, given Snakemake's executor plugin name (None: local run,
    where Snakemake itself caps threads at --cores)."""
    if executor == "slurm":
        return slurm_node_limits(partition)
    if executor == "slurm-jobstep":
        return allocation_limits()
    return None


_warned: set = set()


def fit(rule: str, resource: str, wanted: int, limits: NodeLimits | None, setting: str) -> int:
    """`wanted`, or the node's limit when it is smaller, saying so once per rule and resource
    (and which profile setting makes the request explicit)."""
    if limits is None:
        return wanted
    limit = limits.cpus if resource == "threads" else limits.mem_mb
    if wanted <= limit:
        return wanted
    if (rule, resource) not in _warned and limits.where.endswith("(sinfo)"):
        _warned.add((rule, resource))
        print(
            f"clusterssl: rule {rule} asks for {resource} {wanted} but the largest node of {limits.where} has "
            f"{limit}: submitting with {limit} (set `{setting}` in the profile to choose)",
            file=sys.stderr,
        )
    return limit

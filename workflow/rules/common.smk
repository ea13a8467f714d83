import os
from pathlib import Path

from clusterssl import cluster
from clusterssl.data import SOURCES
from clusterssl.stages import stage_params

RESULTS = str(paths.results_dir(config))
# Shell commands quote every value they interpolate (Snakemake's `q` format), as paths come from
# params and from the checkout's folder and may hold spaces or `$(...)`, which the shell must not
# split or run.
DATASET = config["dataset"]


wildcard_constraints:
    method="|".join(paths.report_rows(config)),
    seed=r"\d+",
    protocol="|".join(paths.evals()),
    dataset="[a-z0-9_]+",
    fraction=r"[0-9.e-]+",


def log_file(name):
    return f"{RESULTS}/logs/{name}.log"


def benchmark_file(name):
    return f"{RESULTS}/benchmarks/{name}.tsv"


def figure_caption(name):
    """The figure's caption as its `@figure` declares it (clusterssl/report/figures.py), as the .rst
    file `snakemake --report` reads: under the working directory's .snakemake/, written only when
    its text changed."""
    from clusterssl.io import write_text

    path = Path(".snakemake/clusterssl/captions").absolute() / f"{name}.rst"
    text = paths.report_figures()[name]["caption"] + "\n"
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    return path


def report_outputs():
    """The report's files; its CSV tables and figures go into `snakemake --report` with their
    caption (a table's: workflow/report/<name>.rst; a figure's: its declaration, figure_caption)."""
    out = []
    for p in paths.report_files(config):
        caption = figure_caption(p.stem) if p.suffix == ".png" else Path(workflow.basedir) / "workflow" / "report" / f"{p.stem}.rst"
        if p.suffix in (".csv", ".png"):
            category = "Figures" if p.suffix == ".png" else "Tables"
            out.append(report(str(p), caption=str(caption), category=category))
        else:
            out.append(str(p))
    return out


def prepared(dataset):
    return [str(p) for p in paths.prepared_files(config, dataset)]


def run_files(method, seed):
    """The pretrained run a row's encoder comes from (none for the two baselines)."""
    if method in (paths.RAW_PIXELS, paths.SCRATCH):
        return []
    return [str(p) for p in paths.run_files(config, method, seed)]


def embed_inputs(w):
    # another dataset's images are resized to the pretraining dataset's shape (its meta.json)
    source = prepared(DATASET) if w.dataset != DATASET else []
    return prepared(w.dataset) + source + run_files(w.method, w.seed)


# Requests are fitted to the machine: Snakemake caps threads at --cores on one machine; under SLURM
# clusterssl.cluster caps threads and memory at the partition's largest node (and says so), so a
# cluster with smaller nodes than a rule asks for still runs it.
def _node_limits():
    plugin = workflow.executor_plugin
    partition = getattr((workflow.resource_settings.default_resources or {}).get("slurm_partition"), "raw", None)
    partition = str(partition).strip("'\"") or None if partition is not None else None
    return cluster.limits_for(plugin.name if plugin else None, partition)


def fit_threads(rule, n):
    return lambda wildcards: cluster.fit(rule, "threads", n, _node_limits(), f"set-threads: {rule}")


def fit_mem_mb(rule, mb):
    return lambda wildcards: cluster.fit(rule, "mem_mb", mb, _node_limits(), f"set-resources: {rule}: mem_mb")


def gpu_visible():
    """Whether this host shows an NVIDIA GPU, as `torch.cuda.is_available()` in the job would,
    read without importing torch (a second and more per Snakemake start, and per SLURM job):
    CUDA_VISIBLE_DEVICES set to nothing or -1 hides every GPU; otherwise the driver lists its
    GPUs under /proc/driver/nvidia/gpus (also inside containers that are given GPUs), or makes
    /dev/nvidia0, ... where /proc is not shared."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    # the driver's files, not the workflow's: joined from os.sep, as `snakemake --lint` flags
    # absolute path literals (rightly, for data and results)
    listed = Path(os.sep, "proc", "driver", "nvidia", "gpus")
    return (listed.is_dir() and any(listed.iterdir())) or any(Path(os.sep, "dev").glob("nvidia[0-9]*"))


def gpus():
    """GPUs a training job asks for when it trains on CUDA ('auto' on a host that sees a GPU):
    one per data-parallel process (pretrain.processes)."""
    device = config["pretrain"]["device"]
    if device == "auto":
        device = "cuda" if gpu_visible() else "cpu"
    return config["pretrain"]["processes"] if device == "cuda" else 0


GPUS = gpus()
EVAL_GPUS = min(GPUS, 1)  # evaluation runs in one process


def params_file(wildcards, output):
    """The merged params file, given to every rule as a function of its outputs. Snakemake
    re-runs a job whose params differ from its last run's, except params that are functions of
    the job's files; the file's name is the whole config's fingerprint, so as a plain param it
    would re-run every job after any change (another seed, another method). What a job reads
    from it is compared through its `stage` param instead. Likewise data/ is shared by every
    preset: another preset does not fetch and prepare again, which would outdate every result
    of the first."""
    return PARAMS

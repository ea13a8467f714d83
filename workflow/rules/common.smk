from clusterssl.stages import stage_params

RESULTS = str(paths.results_dir(config))
DATASET = config["dataset"]


wildcard_constraints:
    method="|".join(paths.report_rows(config)),
    seed=r"\d+",
    protocol="|".join(paths.EVALS),
    dataset="[a-z0-9_]+",
    fraction=r"[0-9.e-]+",


def log_file(name):
    return f"{RESULTS}/logs/{name}.log"


def benchmark_file(name):
    return f"{RESULTS}/benchmarks/{name}.tsv"


def report_outputs():
    return [str(p) for p in paths.report_files(config)]


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

from clusterssl import paths
from clusterssl.stages import stage_params

RESULTS = str(paths.results_dir(config))


wildcard_constraints:
    method="|".join(paths.evaluated_methods(config)),
    seed=r"\d+",
    protocol="|".join(paths.EVALS),
    dataset="[a-z0-9_]+",


def log_file(name):
    return f"{RESULTS}/logs/{name}.log"


def benchmark_file(name):
    return f"{RESULTS}/benchmarks/{name}.tsv"


def report_outputs():
    return [str(p) for p in paths.report_files(config)]


def embed_inputs(w):
    prepared = [str(p) for p in paths.prepared_files(config, config["dataset"])]
    if w.method == paths.RAW_PIXELS:
        return prepared
    return prepared + [str(p) for p in paths.run_files(config, w.method, w.seed)]

rule fetch:
    output:
        directory(str(paths.raw_dir(config, "{dataset}"))),
    params:
        file=params_file,
        stage=stage_params(config, "fetch"),
    log:
        log_file("fetch/{dataset}"),
    benchmark:
        benchmark_file("fetch/{dataset}")
    threads: fit_threads("fetch", 1)
    resources:
        mem_mb=fit_mem_mb("fetch", 1000),
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} data fetch {wildcards.dataset:q} > {log:q} 2>&1"


rule prepare:
    wildcard_constraints:
        dataset="|".join(d for d in SOURCES if not paths.is_sharded(d)),
    input:
        rules.fetch.output,
    output:
        [str(p) for p in paths.prepared_files(config, "{dataset}")],
    params:
        file=params_file,
        stage=stage_params(config, "prepare"),
    log:
        log_file("prepare/{dataset}"),
    benchmark:
        benchmark_file("prepare/{dataset}")
    threads: fit_threads("prepare", 1)
    resources:
        mem_mb=fit_mem_mb("prepare", 2000),
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} data prepare {wildcards.dataset:q} > {log:q} 2>&1"


# datasets too large for memory: the same verb writes shards and their index files
use rule prepare as prepare_sharded with:
    wildcard_constraints:
        dataset="|".join(d for d in SOURCES if paths.is_sharded(d)),
    output:
        [str(p) for p in paths.prepared_files(config, "{dataset}", sharded=True)],
    threads: fit_threads("prepare", 8)  # JPEG decoding in worker processes
    resources:
        mem_mb=fit_mem_mb("prepare", 8000),


rule split:
    input:
        lambda w: prepared(w.dataset),
    output:
        str(paths.split_file(config, "{dataset}", "{fraction}", "{seed}")),
    params:
        file=params_file,
        stage=stage_params(config, "split"),
    log:
        log_file("split/{dataset}_{fraction}_seed{seed}"),
    benchmark:
        benchmark_file("split/{dataset}_{fraction}_seed{seed}")
    threads: fit_threads("split", 1)
    resources:
        mem_mb=fit_mem_mb("split", 2000),
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} data split {wildcards.dataset:q} --fraction {wildcards.fraction:q}"
        " --seed {wildcards.seed:q} > {log:q} 2>&1"

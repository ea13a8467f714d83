rule pretrain:
    input:
        prepared(DATASET),
    output:
        [str(p) for p in paths.run_files(config, "{method}", "{seed}")],
    params:
        file=params_file,
        stage=lambda w: stage_params(config, "pretrain", w.method),
    log:
        log_file("pretrain/{method}_seed{seed}"),
    benchmark:
        benchmark_file("pretrain/{method}_seed{seed}")
    threads: fit_threads("pretrain", 8)
    # the longest jobs, on the critical path: before any evaluation that could wait
    priority: 1
    resources:
        mem_mb=fit_mem_mb("pretrain", 8000),
        gpu=GPUS,
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} pretrain --method {wildcards.method:q} --seed {wildcards.seed:q}"
        " --threads {threads} --no-progress > {log:q} 2>&1"

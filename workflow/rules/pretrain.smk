rule pretrain:
    input:
        prepared(DATASET),
    output:
        [str(p) for p in paths.run_files(config, "{method}", "{seed}")],
    params:
        file=PARAMS,
        stage=lambda w: stage_params(config, "pretrain", w.method),
    log:
        log_file("pretrain/{method}_seed{seed}"),
    benchmark:
        benchmark_file("pretrain/{method}_seed{seed}")
    threads: workflow.cores
    resources:
        mem_mb=8000,
        gpu=1 if config["pretrain"]["device"] == "cuda" else 0,
    conda:
        ENV
    shell:
        "clusterssl --params {params.file} pretrain --method {wildcards.method} --seed {wildcards.seed}"
        " --threads {threads} --no-progress > {log} 2>&1"

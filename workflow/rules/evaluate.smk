rule embed:
    input:
        embed_inputs,
    output:
        str(paths.features_file(config, "{method}", "{seed}", "{dataset}")),
    params:
        file=params_file,
        stage=stage_params(config, "embed"),
    log:
        log_file("embed/{dataset}/{method}_seed{seed}"),
    benchmark:
        benchmark_file("embed/{dataset}/{method}_seed{seed}")
    threads: fit_threads("embed", 2)
    resources:
        mem_mb=fit_mem_mb("embed", 4000),
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} embed --method {wildcards.method:q} --seed {wildcards.seed:q}"
        " --dataset {wildcards.dataset:q} --threads {threads} > {log:q} 2>&1"


rule evaluate:
    input:
        str(paths.features_file(config, "{method}", "{seed}", DATASET)),
    output:
        str(paths.metrics_file(config, "{method}", "{seed}", "{protocol}")),
    params:
        file=params_file,
        stage=lambda w: stage_params(config, w.protocol),
    log:
        log_file("eval/{protocol}/{method}_seed{seed}"),
    benchmark:
        benchmark_file("eval/{protocol}/{method}_seed{seed}")
    threads: fit_threads("evaluate", 1)
    resources:
        mem_mb=fit_mem_mb("evaluate", 4000),
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} eval {wildcards.protocol:q} --method {wildcards.method:q}"
        " --seed {wildcards.seed:q} --threads {threads} > {log:q} 2>&1"


rule transfer:
    input:
        str(paths.features_file(config, "{method}", "{seed}", "{dataset}")),
    output:
        str(paths.metrics_file(config, "{method}", "{seed}", paths.transfer_name("{dataset}"))),
    params:
        file=params_file,
        stage=stage_params(config, "transfer"),
    log:
        log_file("eval/transfer_{dataset}/{method}_seed{seed}"),
    benchmark:
        benchmark_file("eval/transfer_{dataset}/{method}_seed{seed}")
    threads: fit_threads("transfer", 1)
    resources:
        mem_mb=fit_mem_mb("transfer", 4000),
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} eval transfer --target {wildcards.dataset:q} --method {wildcards.method:q}"
        " --seed {wildcards.seed:q} --threads {threads} > {log:q} 2>&1"


rule semisup:
    input:
        data=prepared(DATASET),
        split=str(paths.split_file(config, DATASET, "{fraction}", "{seed}")),
        run=lambda w: run_files(w.method, w.seed),
    output:
        str(paths.metrics_file(config, "{method}", "{seed}", paths.semisup_name("{fraction}"))),
    params:
        file=params_file,
        stage=stage_params(config, "semisup"),
    log:
        log_file("eval/semisup_{fraction}/{method}_seed{seed}"),
    benchmark:
        benchmark_file("eval/semisup_{fraction}/{method}_seed{seed}")
    threads: fit_threads("semisup", 1)
    resources:
        mem_mb=fit_mem_mb("semisup", 4000),
        gpu=EVAL_GPUS,
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} eval semisup --fraction {wildcards.fraction:q} --method {wildcards.method:q}"
        " --seed {wildcards.seed:q} --threads {threads} > {log:q} 2>&1"

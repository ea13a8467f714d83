rule embed:
    input:
        embed_inputs,
    output:
        str(paths.features_file(config, "{method}", "{seed}")),
    params:
        file=PARAMS,
        stage=stage_params(config, "embed"),
    log:
        log_file("embed/{method}_seed{seed}"),
    benchmark:
        benchmark_file("embed/{method}_seed{seed}")
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "clusterssl --params {params.file} embed --method {wildcards.method} --seed {wildcards.seed}"
        " --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        rules.embed.output,
    output:
        str(paths.metrics_file(config, "{method}", "{seed}", "{protocol}")),
    params:
        file=PARAMS,
        stage=lambda w: stage_params(config, w.protocol),
    log:
        log_file("eval/{protocol}/{method}_seed{seed}"),
    benchmark:
        benchmark_file("eval/{protocol}/{method}_seed{seed}")
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "clusterssl --params {params.file} eval {wildcards.protocol} --method {wildcards.method}"
        " --seed {wildcards.seed} --threads {threads} > {log} 2>&1"

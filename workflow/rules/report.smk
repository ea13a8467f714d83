rule report:
    input:
        metrics=[
            str(paths.metrics_file(config, m, s, e))
            for m in paths.report_rows(config)
            for s in config["seeds"]
            for e in paths.evaluations(config, m)
        ],
        runs=[
            str(p)
            for m in paths.methods(config)
            for s in config["seeds"]
            for p in paths.run_files(config, m, s)
        ],
        features=[
            str(paths.features_file(config, m, config["seeds"][0]))
            for m in paths.evaluated_methods(config)
        ],
        reference=f"{workflow.basedir}/reference/reported_numbers.csv",
        meta=prepared(DATASET)[2],
    output:
        report_outputs(),
    params:
        file=params_file,
        stage=stage_params(config, "report"),
    log:
        log_file("report"),
    benchmark:
        benchmark_file("report")
    threads: fit_threads("report", 2)
    resources:
        mem_mb=fit_mem_mb("report", 4000),
    conda:
        ENV
    shell:
        "clusterssl --params {params.file:q} report --reference {input.reference:q} > {log:q} 2>&1"

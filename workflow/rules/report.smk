# What `snakemake --report report.html` shows beyond the results table and annotation figures:
# the training curves and every job's time and memory.


rule inspect_training:
    input:
        logs=every(layout.TRAIN_LOG, "model"),
    output:
        figure=report(
            path(layout.TRAINING_FIGURE),
            caption="../report/training.rst",
            category="Training",
        ),
    log:
        f"logs/inspect_training/{DATASET}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/inspect_training.tsv"
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "latentfss inspect training {input.logs:q} --out {output.figure:q} > {log:q} 2>&1"


# Every other job has run when this one does (its inputs are the run's last outputs): it
# gathers the folder's benchmark files, each job's last run (of rows no longer in the config
# too, until deleted)
rule inspect_benchmarks:
    input:
        figures=FIGURES,
        summary=rules.summarize.output.csv,
    output:
        table=report(
            path(layout.BENCHMARK_TABLE),
            caption="../report/benchmarks.rst",
            category="Benchmarks",
        ),
    log:
        f"logs/inspect_benchmarks/{DATASET}.log",
    benchmark:
        f"logs/inspect_benchmarks/{DATASET}.tsv"  # not in its own table
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        folder=lambda w, output: os.path.join(
            os.path.dirname(output.table), layout.BENCHMARKS
        ),
    shell:
        "latentfss inspect benchmarks {params.folder:q} --out {output.table:q} > {log:q} 2>&1"


onsuccess:
    print(
        f"\nlatentfss: results table {RESULTS}/{layout.SUMMARY_MD} (and summary.csv), figures "
        f"and benchmarks under {RESULTS}/.\nThe report: snakemake --report report.html "
        "(the same --configfile/--config as this run)."
    )

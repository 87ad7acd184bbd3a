# What `snakemake --report report.html` shows beyond the results tables and annotation figures:
# the training curves and every job's time and memory.


rule inspect_training:
    input:
        logs=lambda wildcards: outputs("log_csv", rules.train, rules.train_variant),
    output:
        figure=report(
            f"{RESULTS}/training.png",
            caption="../report/training.rst",
            category="Training",
        ),
    log:
        f"logs/inspect_training/{DATASET}.log",
    benchmark:
        f"{RESULTS}/benchmarks/inspect_training.tsv"
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "latentfss inspect training {input.logs:q} --out {output.figure:q} > {log:q} 2>&1"


rule inspect_benchmarks:
    input:
        benchmark_files,
    output:
        table=report(
            f"{RESULTS}/benchmarks.csv",
            caption="../report/benchmarks.rst",
            category="Benchmarks",
        ),
    log:
        f"logs/inspect_benchmarks/{DATASET}.log",
    benchmark:
        f"{RESULTS}/benchmarks/inspect_benchmarks.tsv"
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "latentfss inspect benchmarks {input:q} --out {output.table:q} > {log:q} 2>&1"


onsuccess:
    print(
        f"\nlatentfss: results table {RESULTS}/summary.md (and summary.csv), figures and "
        f"benchmarks under {RESULTS}/.\nThe report: snakemake --report report.html "
        "(the same --configfile/--config as this run)."
    )

# Region bank, test episodes with rectified prototypes, and the results table (3.4, 4.1); rows
# with the same inputs share a bank or an evaluation (common.smk, SHARED).


rule build_bank:
    input:
        index=path(layout.INDEX),
        model=at("model", layout.MODEL),
        pseudo_masks=at("annotation", layout.PSEUDO_MASKS, images="train_set"),
    output:
        bank=directory(path(layout.BANK)),
    log:
        f"logs/build_bank/{DATASET}_{{row}}_train{{tseed}}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/build_bank_{{row}}_train{{tseed}}_fold{{fold}}_shot{{shot}}.tsv"
    wildcard_constraints:
        row=owners("bank"),
    conda:
        GPU_ENV
    threads: lambda w: gpu_job_threads(loaders=ROWS[w.row]["evaluate"]["workers"])
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120 * LONGER,
    params:
        evaluate=section("evaluate", keep=runs.BANK_KEYS),
        device=device,
    shell:
        "latentfss build-bank --index {input.index:q} --model {input.model:q}"
        " --pseudo-masks {input.pseudo_masks:q} --out {output.bank:q}"
        " --params {params.evaluate:q} --threads {threads} --device {params.device}"
        " > {log:q} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        **eval_outputs(path(layout.EVAL)),
    log:
        f"logs/evaluate/{DATASET}_{{row}}_train{{tseed}}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/evaluate_{{row}}_train{{tseed}}_fold{{fold}}_shot{{shot}}.tsv"
    wildcard_constraints:
        row=owners("evaluate"),
    conda:
        GPU_ENV
    threads: lambda w: gpu_job_threads(loaders=ROWS[w.row]["evaluate"]["workers"])
    resources:
        gpu=1,
        mem_mb=8000,  # the query features it keeps (evaluate.cache_mb) are the host's on a CPU
        runtime=240 * LONGER,
    params:
        out=lambda wildcards, output: Path(output.metrics).parent,
        evaluate=section("evaluate"),
        protocol=section("protocol"),
        bank=optional_flag("bank"),
        device=device,
    shell:
        "latentfss evaluate --index {input.index:q} --model {input.model:q} {params.bank}"
        " --fold {wildcards.fold} --shot {wildcards.shot} --out {params.out:q}"
        " --params {params.evaluate:q} --protocol {params.protocol:q} --threads {threads}"
        " --device {params.device} > {log:q} 2>&1"


# One table of every row, each with its paired difference to the reference row
rule summarize:
    input:
        metrics=[metrics for _, metrics in EVALUATIONS],
    output:
        csv=report(
            path(layout.SUMMARY_CSV),
            caption="../report/summary.rst",
            category="Results",
        ),
        md=path(layout.SUMMARY_MD),
    log:
        f"logs/summarize/{DATASET}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/summarize.tsv"
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        evaluations=[f"{row}={metrics}" for row, metrics in EVALUATIONS],
        rows=json.dumps(runs.describe(config, SHARED)),
        reference=REFERENCE,
        title=f"latentfss ({DATASET})",
    shell:
        "latentfss summarize {params.evaluations:q} --rows {params.rows:q}"
        " --reference {params.reference:q} --csv {output.csv:q} --md {output.md:q}"
        " --title {params.title:q} > {log:q} 2>&1"

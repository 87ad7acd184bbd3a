# Region bank, test episodes with rectified prototypes, and the results tables (3.4, 4.1).


rule build_bank:
    input:
        index=rules.prepare.output.index,
        model=rules.train.output.model,
        pseudo_masks=rules.write_pseudo_masks.output.masks,
    output:
        bank=directory(f"{RESULTS}/fold{{fold}}/shot{{shot}}/bank"),
    log:
        f"logs/build_bank/{DATASET}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_bank_fold{{fold}}_shot{{shot}}.tsv"
    conda:
        GPU_ENV
    threads: gpu_job_threads(loaders=config["evaluate"]["workers"])
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120 * LONGER,
    params:
        evaluate=section(
            "evaluate", keep=["resize", "input_size", "batch_size", "workers"]
        ),
        device=device,
    shell:
        "latentfss build-bank --index {input.index:q} --model {input.model:q}"
        " --pseudo-masks {input.pseudo_masks:q} --out {output.bank:q}"
        " --params {params.evaluate:q} --threads {threads} --device {params.device}"
        " > {log:q} 2>&1"


use rule build_bank as build_bank_variant with:
    input:
        index=rules.prepare.output.index,
        model=rules.train_variant.output.model,
        pseudo_masks=rules.write_pseudo_masks.output.masks,
    output:
        bank=directory(f"{VARIANT_MODEL}/bank"),
    log:
        f"logs/build_bank/{DATASET}_{VARIANT_RUN}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_bank_{VARIANT_RUN}_fold{{fold}}_shot{{shot}}.tsv"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        **eval_outputs(f"{RESULTS}/fold{{fold}}/shot{{shot}}/eval"),
    log:
        f"logs/evaluate/{DATASET}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_fold{{fold}}_shot{{shot}}.tsv"
    conda:
        GPU_ENV
    threads: gpu_job_threads(loaders=config["evaluate"]["workers"])
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=240 * LONGER,
    params:
        out=lambda wildcards, output: Path(output.metrics).parent,
        evaluate=evaluate_params,
        protocol=section("protocol"),
        bank=optional_flag("bank"),
        device=device,
    shell:
        "latentfss evaluate --index {input.index:q} --model {input.model:q} {params.bank}"
        " --fold {wildcards.fold} --shot {wildcards.shot} --out {params.out:q}"
        " --params {params.evaluate:q} --protocol {params.protocol:q} --threads {threads}"
        " --device {params.device} > {log:q} 2>&1"


# A variant (a Table 3 or 5 row, another training seed): evaluation with its switches, of its
# model from train or train_variant.
use rule evaluate as evaluate_variant with:
    output:
        **eval_outputs(VARIANT_EVAL),
    log:
        f"logs/evaluate/{DATASET}_fg{{fg}}_{VARIANT_RUN}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_fg{{fg}}_{VARIANT_RUN}_fold{{fold}}_shot{{shot}}.tsv"


rule summarize:
    input:
        metrics=lambda wildcards: outputs("metrics", rules.evaluate),
        variants=lambda wildcards: outputs("metrics", rules.evaluate_variant),
        scores=lambda wildcards: outputs(
            "scores", rules.evaluate, rules.evaluate_variant
        ),
    output:
        csv=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Results",
        ),
        md=f"{RESULTS}/summary.md",
    log:
        f"logs/summarize/{DATASET}.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarize.tsv"
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        title=f"latentfss ({DATASET}, {config['encoder']['arch']})",
    shell:
        "latentfss summarize {input.metrics:q} --variants {input.variants:q}"
        " --csv {output.csv:q} --md {output.md:q}"
        " --title {params.title:q} > {log:q} 2>&1"

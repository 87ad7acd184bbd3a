# Region bank, test episodes with rectified prototypes, and the results tables (3.4, 4.1).


rule build_bank:
    input:
        images=rules.prepare.output.images,
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
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        index=lambda wildcards, input: Path(input.images).parent,
        evaluate=section("evaluate", keep=["input_size", "batch_size"]),
    shell:
        "latentfss build-bank --index {params.index:q} --model {input.model:q}"
        " --pseudo-masks {input.pseudo_masks:q} --out {output.bank:q}"
        " --params {params.evaluate:q} --threads {threads} > {log:q} 2>&1"


rule evaluate:
    input:
        images=rules.prepare.output.images,
        model=rules.train.output.model,
        bank=rules.build_bank.output.bank,
    output:
        metrics=f"{RESULTS}/fold{{fold}}/shot{{shot}}/eval/metrics.json",
        per_class=f"{RESULTS}/fold{{fold}}/shot{{shot}}/eval/per_class.csv",
        episodes=expand(
            f"{RESULTS}/fold{{{{fold}}}}/shot{{{{shot}}}}/eval/episodes_seed{{seed}}.csv",
            seed=config["evaluate"]["seeds"],
        ),
    log:
        f"logs/evaluate/{DATASET}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_fold{{fold}}_shot{{shot}}.tsv"
    conda:
        GPU_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        index=lambda wildcards, input: Path(input.images).parent,
        out=lambda wildcards, output: Path(output.metrics).parent,
        evaluate=section("evaluate"),
        protocol=section("protocol"),
    shell:
        "latentfss evaluate --index {params.index:q} --model {input.model:q} --bank {input.bank:q}"
        " --fold {wildcards.fold} --shot {wildcards.shot} --out {params.out:q}"
        " --params {params.evaluate:q} --protocol {params.protocol:q} --threads {threads}"
        " > {log:q} 2>&1"


rule summarize:
    input:
        metrics=expand(
            rules.evaluate.output.metrics, fold=config["folds"], shot=config["shots"]
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
    conda:
        CPU_ENV
    params:
        title=f"latentfss ({DATASET}, {config['encoder']['arch']})",
    shell:
        "latentfss summarize {input.metrics:q} --csv {output.csv:q} --md {output.md:q}"
        " --title {params.title:q} > {log:q} 2>&1"

# Episodic training with the mining branch, one model per fold and shot (Eq. 1, 4-7).


rule train:
    input:
        images=rules.prepare.output.images,
        encoder_init=rules.extract_features.output.encoder_init,
        pseudo_masks=rules.write_pseudo_masks.output.masks,
    output:
        model=f"{RESULTS}/fold{{fold}}/shot{{shot}}/model.pt",
        log_csv=f"{RESULTS}/fold{{fold}}/shot{{shot}}/train.csv",
    log:
        f"logs/train/{DATASET}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_fold{{fold}}_shot{{shot}}.tsv"
    conda:
        GPU_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    params:
        index=lambda wildcards, input: Path(input.images).parent,
        train=section("train"),
        model=section("model"),
        protocol=section("protocol"),
        seed=config["seed"],
    shell:
        "latentfss train --index {params.index:q} --encoder-init {input.encoder_init:q}"
        " --pseudo-masks {input.pseudo_masks:q} --fold {wildcards.fold} --shot {wildcards.shot}"
        " --out {output.model:q} --log-csv {output.log_csv:q} --params {params.train:q}"
        " --model {params.model:q} --protocol {params.protocol:q} --seed {params.seed}"
        " --threads {threads} > {log:q} 2>&1"

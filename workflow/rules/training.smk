# Episodic training with the mining branch, one model per fold and shot (Eq. 1, 4-7).


rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"{RESULTS}/fold{{fold}}/shot{{shot}}/model.pt",
        log_csv=f"{RESULTS}/fold{{fold}}/shot{{shot}}/train.csv",
    log:
        f"logs/train/{DATASET}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_fold{{fold}}_shot{{shot}}.tsv"
    conda:
        GPU_ENV
    threads: gpu_job_threads(loaders=2 * config["train"]["workers"])
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        train=section("train"),
        model=model_params,
        protocol=section("protocol"),
        remain=optional_flag("remain"),
        seed=lambda wildcards: switch(wildcards, "tseed"),
        device=device,
    shell:
        "latentfss train --index {input.index:q} --encoder-init {input.encoder_init:q}"
        " --pseudo-masks {input.pseudo_masks:q} {params.remain}"
        " --fold {wildcards.fold} --shot {wildcards.shot}"
        " --out {output.model:q} --log-csv {output.log_csv:q} --params {params.train:q}"
        " --model-params {params.model:q} --protocol {params.protocol:q} --seed {params.seed}"
        " --threads {threads} --device {params.device} > {log:q} 2>&1"


# A variant's model (a Table 3 or 5 row, another training seed): the same training with its
# bg_rectify, mine, remain and training seed.
use rule train as train_variant with:
    output:
        model=f"{VARIANT_MODEL}/model.pt",
        log_csv=f"{VARIANT_MODEL}/train.csv",
    log:
        f"logs/train/{DATASET}_{VARIANT_RUN}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_{VARIANT_RUN}_fold{{fold}}_shot{{shot}}.tsv"

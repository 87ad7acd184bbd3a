# Episodic training with the mining branch, one model per row's training seed, fold and shot
# (Eq. 1, 4-7); rows with the same training inputs share it (common.smk, SHARED).


rule train:
    input:
        unpack(train_inputs),
    output:
        model=path(layout.MODEL),
        log_csv=path(layout.TRAIN_LOG),
    log:
        f"logs/train/{DATASET}_{{row}}_train{{tseed}}_fold{{fold}}_shot{{shot}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/train_{{row}}_train{{tseed}}_fold{{fold}}_shot{{shot}}.tsv"
    wildcard_constraints:
        row=owners("model"),
    conda:
        GPU_ENV
    threads: lambda w: gpu_job_threads(loaders=2 * ROWS[w.row]["train"]["workers"])
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        train=section("train"),
        model=section("model"),
        protocol=section("protocol"),
        remain=optional_flag("remain"),
        device=device,
    shell:
        "latentfss train --index {input.index:q} --encoder-init {input.encoder_init:q}"
        " --pseudo-masks {input.pseudo_masks:q} {params.remain}"
        " --fold {wildcards.fold} --shot {wildcards.shot}"
        " --out {output.model:q} --log-csv {output.log_csv:q} --params {params.train:q}"
        " --model-params {params.model:q} --protocol {params.protocol:q} --seed {wildcards.tseed}"
        " --threads {threads} --device {params.device} > {log:q} 2>&1"

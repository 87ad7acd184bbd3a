# Offline annotation (section 3.3.1): [the encoder's own pre-training] -> features ->
# prototypes -> per fold the train set and its K+1 representatives -> pseudo masks.


# encoder.weights: pretrain, the pipeline's ImageNet analogue: a ResNet trained on a generated
# corpus labelled by its factors only (fold-independent; never a train or val image)
rule pretrain_encoder:
    output:
        weights=PRETRAINED,
    log:
        f"logs/pretrain_encoder/{DATASET}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_encoder.tsv"
    conda:
        GPU_ENV
    threads: 4
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120,
    params:
        pretrain=section("pretrain"),
        synthetic=section("synthetic"),
        encoder=section("encoder", keep=["arch"]),
        seed=config["seed"],
        device=device,
    shell:
        "latentfss pretrain-encoder --out {output.weights:q} --params {params.pretrain:q}"
        " --synthetic {params.synthetic:q} --encoder {params.encoder:q} --seed {params.seed}"
        " --threads {threads} --device {params.device} > {log:q} 2>&1"


rule extract_features:
    input:
        index=rules.prepare.output.index,
        weights=PRETRAINED if PRETRAIN else [],
    output:
        **features_output(),
        encoder_init=f"{RESULTS}/encoder_init.pt",
    log:
        f"logs/extract_features/{DATASET}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_features.tsv"
    conda:
        GPU_ENV
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240 * LONGER,
    params:
        encoder=encoder_params,
        shipped=SHIPPED,
        annotation=section("annotation", drop=["keep_features"]),
        seed=config["seed"],
        out=lambda wildcards, output: (
            f"--out {shlex.quote(output.features)}" if KEEP_FEATURES else ""
        ),
        device=device,
    shell:
        "latentfss extract-features --index {input.index:q} {params.out}"
        " --encoder-out {output.encoder_init:q} --encoder {params.encoder:q}"
        " --params {params.annotation:q} --seed {params.seed} --threads {threads}"
        " --device {params.device} > {log:q} 2>&1"


rule pool_prototypes:
    input:
        unpack(feature_inputs),
    output:
        prototypes=directory(f"{RESULTS}/prototypes.zarr"),
    log:
        f"logs/pool_prototypes/{DATASET}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pool_prototypes.tsv"
    conda:
        CPU_ENV
    threads: 2
    resources:
        gpu=int(ENCODES["pool"]),
        mem_mb=4000,
        runtime=120 * LONGER,
    params:
        features=optional_flag("features"),
        annotation=section("annotation", drop=["keep_features"]),
        device=device,
    shell:
        "latentfss pool-prototypes --index {input.index:q} {params.features}"
        " --encoder-init {input.encoder_init:q} --annotation {params.annotation:q}"
        " --device {params.device} --out {output.prototypes:q} --threads {threads}"
        " > {log:q} 2>&1"


rule cluster:
    input:
        index=rules.prepare.output.index,
        prototypes=rules.pool_prototypes.output.prototypes,
    output:
        clusters=directory(f"{RESULTS}/fold{{fold}}/clusters.zarr"),
    log:
        f"logs/cluster/{DATASET}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cluster_fold{{fold}}.tsv"
    conda:
        CPU_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cluster=section("cluster"),
        protocol=section("protocol"),
        seed=config["seed"],
    shell:
        "latentfss cluster --index {input.index:q} --prototypes {input.prototypes:q}"
        " --fold {wildcards.fold} --out {output.clusters:q} --params {params.cluster:q}"
        " --protocol {params.protocol:q} --seed {params.seed} --threads {threads} > {log:q} 2>&1"


rule write_pseudo_masks:
    input:
        unpack(feature_inputs),
        clusters=rules.cluster.output.clusters,
    output:
        masks=directory(f"{RESULTS}/fold{{fold}}/pseudo_masks.zarr"),
    log:
        f"logs/write_pseudo_masks/{DATASET}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/write_pseudo_masks_fold{{fold}}.tsv"
    conda:
        CPU_ENV
    threads: 2
    resources:
        gpu=int(ENCODES["masks"]),
        mem_mb=4000,
        runtime=120 * LONGER,
    params:
        features=optional_flag("features"),
        annotation=section("annotation", drop=["keep_features"]),
        device=device,
        images="train_set",
        unlabeled=config["mining"]["unlabeled"],
    shell:
        "latentfss write-pseudo-masks --index {input.index:q} {params.features}"
        " --encoder-init {input.encoder_init:q} --annotation {params.annotation:q}"
        " --device {params.device} --clusters {input.clusters:q} --out {output.masks:q}"
        " --images {params.images} --unlabeled {params.unlabeled:q} --threads {threads}"
        " > {log:q} 2>&1"


# The fold's Remain (train images without a large base class), for runs with mining.remain.
use rule write_pseudo_masks as write_pseudo_masks_remain with:
    output:
        masks=directory(f"{RESULTS}/fold{{fold}}/remain/pseudo_masks.zarr"),
    log:
        f"logs/write_pseudo_masks/{DATASET}_fold{{fold}}_remain.log",
    benchmark:
        f"{RESULTS}/benchmarks/write_pseudo_masks_fold{{fold}}_remain.tsv"
    resources:
        gpu=int(not KEEP_FEATURES),
        mem_mb=4000,
        runtime=120 * LONGER,
    params:
        features=optional_flag("features"),
        annotation=section("annotation", drop=["keep_features"]),
        device=device,
        images="remain",
        unlabeled=[],


rule inspect_pseudo_masks:
    input:
        masks=rules.write_pseudo_masks.output.masks,
        index=rules.prepare.output.index,
    output:
        figure=report(
            f"{RESULTS}/fold{{fold}}/pseudo_masks.png",
            caption="../report/pseudo_masks.rst",
            category="Offline annotation",
            subcategory="Pseudo masks",
        ),
    log:
        f"logs/inspect_pseudo_masks/{DATASET}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/inspect_pseudo_masks_fold{{fold}}.tsv"
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "latentfss inspect pseudo-masks --index {input.index:q} --pseudo-masks {input.masks:q}"
        " --out {output.figure:q} > {log:q} 2>&1"


rule inspect_prototypes:
    input:
        prototypes=rules.pool_prototypes.output.prototypes,
        clusters=rules.cluster.output.clusters,
    output:
        figure=report(
            f"{RESULTS}/fold{{fold}}/prototypes.png",
            caption="../report/prototypes.rst",
            category="Offline annotation",
            subcategory="Prototypes",
        ),
    log:
        f"logs/inspect_prototypes/{DATASET}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/inspect_prototypes_fold{{fold}}.tsv"
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "latentfss inspect prototypes --prototypes {input.prototypes:q}"
        " --clusters {input.clusters:q} --out {output.figure:q} > {log:q} 2>&1"

# Offline annotation (section 3.3.1): [the encoder's own pre-training] -> features ->
# prototypes -> per fold the train set and its K+1 representatives -> pseudo masks. Each job
# runs in the folder of the first row with its inputs (common.smk, SHARED).


# encoder.weights: pretrain, the pipeline's ImageNet analogue: a ResNet trained on a generated
# corpus labelled by its factors only (fold-independent; never a train or val image)
rule pretrain_encoder:
    output:
        weights=path(layout.PRETRAINED),
    log:
        f"logs/pretrain_encoder/{DATASET}_{{row}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/pretrain_encoder_{{row}}.tsv"
    wildcard_constraints:
        row=owners("pretrain"),
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
        index=path(layout.INDEX),
        weights=pretrained,
    output:
        **features_output(),
        encoder_init=path(layout.ENCODER_INIT),
    log:
        f"logs/extract_features/{DATASET}_{{row}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/extract_features_{{row}}.tsv"
    wildcard_constraints:
        row=owners("features"),
    conda:
        GPU_ENV
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240 * LONGER,
    params:
        encoder=encoder_params,
        shipped=shipped,
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
        prototypes=directory(path(layout.PROTOTYPES)),
    log:
        f"logs/pool_prototypes/{DATASET}_{{row}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/pool_prototypes_{{row}}.tsv"
    wildcard_constraints:
        row=owners("features"),
    conda:
        CPU_ENV
    threads: 2
    resources:
        gpu=int(not KEEP_FEATURES),
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
        index=path(layout.INDEX),
        prototypes=at("features", layout.PROTOTYPES),
    output:
        clusters=directory(path(layout.CLUSTERS)),
    log:
        f"logs/cluster/{DATASET}_{{row}}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/cluster_{{row}}_fold{{fold}}.tsv"
    wildcard_constraints:
        row=owners("annotation"),
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


# images: the fold's train set (and the mining.unlabeled images), or its Remain (the train
# images without a large base class) for rows with mining.remain
rule write_pseudo_masks:
    input:
        unpack(feature_inputs),
        clusters=path(layout.CLUSTERS),
    output:
        masks=directory(path(layout.PSEUDO_MASKS)),
    log:
        f"logs/write_pseudo_masks/{DATASET}_{{row}}_fold{{fold}}_{{images}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/write_pseudo_masks_{{row}}_fold{{fold}}_{{images}}.tsv"
    wildcard_constraints:
        row=owners("annotation"),
    conda:
        CPU_ENV
    threads: 2
    resources:
        gpu=encodes,
        mem_mb=4000,
        runtime=120 * LONGER,
    params:
        features=optional_flag("features"),
        annotation=section("annotation", drop=["keep_features"]),
        device=device,
        unlabeled=lambda w: (
            ROWS[w.row]["mining"]["unlabeled"] if w.images == "train_set" else []
        ),
    shell:
        "latentfss write-pseudo-masks --index {input.index:q} {params.features}"
        " --encoder-init {input.encoder_init:q} --annotation {params.annotation:q}"
        " --device {params.device} --clusters {input.clusters:q} --out {output.masks:q}"
        " --images {wildcards.images} --unlabeled {params.unlabeled:q} --threads {threads}"
        " > {log:q} 2>&1"


rule inspect_pseudo_masks:
    input:
        masks=path(layout.PSEUDO_MASKS, images="train_set"),
        index=path(layout.INDEX),
    output:
        figure=report(
            path(layout.PSEUDO_MASKS_FIGURE),
            caption="../report/pseudo_masks.rst",
            category="Offline annotation",
            subcategory="Pseudo masks",
        ),
    log:
        f"logs/inspect_pseudo_masks/{DATASET}_{{row}}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/inspect_pseudo_masks_{{row}}_fold{{fold}}.tsv"
    wildcard_constraints:
        row=owners("annotation"),
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
        prototypes=at("features", layout.PROTOTYPES),
        clusters=path(layout.CLUSTERS),
    output:
        figure=report(
            path(layout.PROTOTYPES_FIGURE),
            caption="../report/prototypes.rst",
            category="Offline annotation",
            subcategory="Prototypes",
        ),
    log:
        f"logs/inspect_prototypes/{DATASET}_{{row}}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/inspect_prototypes_{{row}}_fold{{fold}}.tsv"
    wildcard_constraints:
        row=owners("annotation"),
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "latentfss inspect prototypes --prototypes {input.prototypes:q}"
        " --clusters {input.clusters:q} --out {output.figure:q} > {log:q} 2>&1"

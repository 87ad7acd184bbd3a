# Data: generate the synthetic benchmark (when configured) and index the dataset once.


if DATASET == "synthetic":

    rule make_synthetic:
        output:
            root=directory(config["dataset"]["root"]),
        log:
            "logs/make_synthetic/synthetic.log",
        benchmark:
            f"{RESULTS}/{layout.BENCHMARKS}/make_synthetic.tsv"
        conda:
            CPU_ENV
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            synthetic=section("synthetic"),
        shell:
            "latentfss make-synthetic --out {output.root:q} --params {params.synthetic:q}"
            " > {log:q} 2>&1"


rule prepare:
    input:
        root=rules.make_synthetic.output.root if DATASET == "synthetic" else [],
        train_list=TRAIN_LIST_FILE,
    output:
        index=directory(path(layout.INDEX)),  # images.csv, pixels.csv, meta.json (COCO: masks/)
    log:
        f"logs/prepare/{DATASET}.log",
    benchmark:
        f"{RESULTS}/{layout.BENCHMARKS}/prepare.tsv"
    conda:
        CPU_ENV
    threads: 4
    resources:
        mem_mb=16000 if DATASET == "coco" else 4000,  # COCO: the train JSON in memory
        runtime=120,
    params:
        dataset=section("dataset"),
    shell:
        "latentfss prepare --out {output.index:q} --params {params.dataset:q} --threads {threads}"
        " > {log:q} 2>&1"

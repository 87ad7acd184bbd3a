# latentfss: few-shot segmentation by mining latent classes (Yang et al., ICCV 2021).
#   snakemake --cores 2                 the embedded synthetic benchmark
#   snakemake --cores 8 --configfile workflow/presets/pascal.yaml --config 'dataset={root: ...}'
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/annotation.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        FIGURES,
        rules.summarize.output,
        rules.inspect_benchmarks.output.table,

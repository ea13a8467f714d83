# clusterssl workflow: fetch -> prepare -> pretrain -> embed -> eval {linear,knn,cluster} -> report.
# Orchestration only: every rule runs one `clusterssl` verb; all paths come from clusterssl.paths.
#   snakemake --cores all                                            # default preset (params.yaml)
#   snakemake --cores all --configfile config/presets/tiny.yaml      # another (complete) preset
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


validate(config, "workflow/schemas/params.schema.yaml")

# The verbs read the params file themselves. Presets are complete params files, so the last
# --configfile given (else params.yaml) holds exactly the merged config Snakemake sees.
PARAMS = (list(workflow.overwrite_configfiles) or ["params.yaml"])[-1]
ENV = "../envs/clusterssl.yaml"  # relative to workflow/rules/


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        report_outputs(),

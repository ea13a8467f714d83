# clusterssl workflow: fetch -> prepare -> split / pretrain -> embed -> eval -> report.
# Orchestration only: every rule runs one `clusterssl` verb; all paths come from clusterssl.paths.
#   snakemake --cores all                                            # default preset (params.yaml)
#   snakemake --cores all --configfile config/presets/tiny.yaml      # a preset, merged onto params.yaml
#   snakemake --cores all --config 'seeds=[0,1,2]'                   # any key overridden
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


from snakemake.utils import update_config
from clusterssl import paths
from clusterssl.config import typed, validate, write_merged_params
from clusterssl.io import UserError

update_config(config, typed(workflow.config_settings.config))  # `--config seeds=[0,1,2]`: ints, not '0'
try:  # the schema is completed from the method registry (each method declares its params)
    validate(config, "the Snakemake config (params.yaml, --configfile, --config)")
except UserError as exc:
    raise WorkflowError(str(exc)) from None

# The config Snakemake validated (params.yaml, then each --configfile, then --config, merged) is
# written to a file named by its fingerprint that every verb reads with --params, so no job sees
# other params than its DAG's, even when another invocation with another config shares the folder.
PARAMS = str(write_merged_params(config, paths.merged_params_dir(config)))
ENV = "../envs/clusterssl.yaml"  # relative to workflow/rules/


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        report_outputs(),

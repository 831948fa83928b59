# mnemo: find, localize and remove memorization in diffusion models.
# `snakemake --cores all` runs the default config (offline phantom demo); see README.md.

from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from mnemo.config import ConfigError, validate

min_version("9.0")  # what pyproject.toml and envs/mnemo.yaml install


# The X-ray demo config is the base that --configfile files are merged over; a Stable Diffusion
# track config (dataset.source: prompts, e.g. config/sd14.yaml) is complete on its own.
if config.get("dataset", {}).get("source") != "prompts":

    configfile: str(Path(workflow.basedir) / "config.yaml")


try:
    validate(config, Path(workflow.basedir) / "config.schema.yaml")
except ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/latent.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/embed.smk"
include: "rules/detect.smk"
include: "rules/localize.smk"
include: "rules/validate.smk"
include: "rules/fidelity.smk"
include: "rules/report.smk"


# Figures and tables read small result files and take seconds: on a cluster they run on the
# submitting host instead of waiting in the queue (validate_detection computes the detection
# metrics besides its figures, so it stays a cluster job).
localrules:
    tables,
    plot_loss,
    plot_localization,
    contact_sheet,


if xray():

    localrules:
        data_preview,


rule all:
    input:
        all_targets(),
    default_target: True

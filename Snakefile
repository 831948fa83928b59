# mnemo: find, localize and remove memorization in diffusion models.
# `snakemake --cores all` runs the default config (offline phantom demo); see README.md.

from pathlib import Path

from snakemake.exceptions import WorkflowError

from mnemo.config import ConfigError, validate


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
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/embed.smk"
include: "rules/detect.smk"
include: "rules/localize.smk"
include: "rules/validate.smk"
include: "rules/fidelity.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True

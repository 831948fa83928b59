"""Mitigation kinds (config key `mitigations.<name>.kind`). Import-light: the workflow reads them
when it is parsed, and config.schema.yaml's `mitigations` branches must name the same kinds."""

NEURON_MITIGATIONS = ("nemo", "nemo_global", "random")  # block value neurons found by localization
EMBEDDING_MITIGATIONS = ("wen_embedding",)  # replace the prompt embedding (Wen et al.)
MITIGATION_KINDS = ("none", *NEURON_MITIGATIONS, *EMBEDDING_MITIGATIONS)

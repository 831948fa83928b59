# Shared helpers: result paths, input functions, the targets of `all`.

import hashlib
import json

from mnemo.config import variant_train_config
from mnemo.privacy import load_salt

R = config["results"]
load_salt(config["privacy"]["salt_file"])  # created once, before any job reads it


wildcard_constraints:
    variant="[A-Za-z0-9_-]+",
    mitigation="[A-Za-z0-9_-]+",
    descriptor="[A-Za-z0-9_-]+",
    split="train|valid",


def code(*modules):
    """Library modules a rule runs: edits to them rerun the rule (Snakemake only sees the script)."""
    root = Path(workflow.basedir) / "src" / "mnemo"
    return [str(root / f"{m}.py") for m in ("__init__", "workflow", *modules)]


def digest(value):
    """Short hash of a config sub-dict, for params that should trigger reruns without bloating logs."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def gpus():
    return int(config["resources"]["gpu"])


def variants():
    return list(config["variants"])


def mitigations_of(variant):
    return list(config["variants"][variant]["mitigations"])


def dataset_csv(split):
    if config["dataset"]["source"] == "phantoms":
        return f"{R}/data/phantoms/{split}.csv"
    if split != "train":
        raise WorkflowError("only the train split of a user dataset is cached")
    return config["dataset"]["csv"]


def dataset_root():
    if config["dataset"]["source"] == "phantoms":
        return f"{R}/data"
    return config["dataset"]["image_root"]


def planted_manifest():
    return [f"{R}/data/phantoms/planted.csv"] if config["dataset"]["source"] == "phantoms" else []


def primary():
    return config["match"]["primary"]


def descriptors():
    return list(config["descriptors"])


def sample_sets():
    """(variant, mitigation) pairs that are generated."""
    return [(v, m) for v in variants() for m in mitigations_of(v)]


def all_targets():
    """The tables pull in every stage; the figures of the report come with their stages."""
    return [f"{R}/tables/summary.md"]


NEURON_KINDS = ("nemo", "nemo_global", "random")


def localized_variants():
    """Variants whose mitigations need NeMo's neurons (localization and re-trigger run for them)."""
    return [
        v
        for v in variants()
        if any(config["mitigations"][m]["kind"] in NEURON_KINDS for m in mitigations_of(v))
    ]


def benchmark_files(wildcards=None):
    """Benchmark TSVs of every job upstream of the tables, for the cost table."""
    names = ["cache_dataset/train", "train_classifier"]
    if config["dataset"]["source"] == "phantoms":
        names.append("phantoms")
    names += [
        f"train_copydetect/{d}" for d in descriptors() if config["descriptors"][d]["kind"] == "copydetect"
    ]
    names += [f"embed_train/{d}" for d in descriptors()]
    for v in variants():
        names += [f"train/{v}", f"detect/{v}"]
    for v in localized_variants():
        names += [f"localize/{v}", f"retrigger/{v}"]
    for v, m in sample_sets():
        names += [f"generate/{v}/{m}", f"fidelity/{v}/{m}"]
        names += [f"embed_samples/{d}/{v}/{m}" for d in descriptors()]
        names += [f"match/{d}/{v}/{m}" for d in descriptors()]
    return [f"{R}/benchmarks/{n}.tsv" for n in names]

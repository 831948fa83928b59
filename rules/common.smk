# Shared helpers: result paths, input functions, the targets of `all`.

from mnemo.config import variant_train_config
from mnemo.dependencies import library_files
from mnemo.mitigate.kinds import NEURON_MITIGATIONS

R = config["results"]


wildcard_constraints:
    variant="[A-Za-z0-9_-]+",
    mitigation="[A-Za-z0-9_-]+",
    descriptor="[A-Za-z0-9_-]+",
    split="train|valid",


def code(script):
    """The library files scripts/{script}.py runs (from its imports), as inputs: editing one reruns
    the script's jobs; Snakemake alone sees only the script."""
    base = Path(workflow.basedir)
    return list(library_files(base / "scripts" / f"{script}.py", base / "src" / "mnemo"))


def gpus():
    return int(config["resources"]["gpu"])


def torch_settings(model=False):
    """The `torch` param of jobs that compute with torch (device, CPU threads) and, with `model`,
    load a variant's model (its dtype, whether it is pretrained). Scripts read these params, never
    the config, so that the params trigger sees a change."""

    def settings(wildcards):
        out = {"device": config.get("device", "auto"), "threads": config.get("torch_threads", "auto")}
        if model:
            variant = config["variants"][wildcards.variant]
            out.update(dtype=variant.get("dtype", "auto"), pretrained=bool(variant.get("pretrained")))
        return out

    return settings


def variants():
    return list(config["variants"])


def guidance_of(variant, mitigation):
    """Guidance scales of one sample set: mitigated sets may use fewer (`mitigation_guidance`)."""
    settings = config["variants"][variant]
    if mitigation == "none":
        return settings["guidance"]
    return settings.get("mitigation_guidance") or settings["guidance"]


def mitigations_of(variant):
    return list(config["variants"][variant]["mitigations"])


def xray():
    """X-ray track (a dataset to train on) vs Stable Diffusion track (pretrained models, prompt files)."""
    return config["dataset"]["source"] in ("phantoms", "chexpert")


def has_reference_images():
    """Training images to match samples against: the X-ray cache, or SD originals when given."""
    return xray() or bool(config["prompts"].get("originals"))


def pretrained(variant):
    return config["variants"][variant].get("pretrained")


def trained(variant):
    """Whether the workflow trains the variant: from scratch, or fine-tuning its pretrained pipeline."""
    return not pretrained(variant) or "train" in config["variants"][variant]


def model_folder(variant):
    """A variant's model: trained by the workflow, or a local pretrained diffusers folder."""
    if trained(variant):
        return f"{R}/models/{variant}/pipeline"
    return pretrained(variant)


def model_dir(wildcards):
    return model_folder(wildcards.variant)


def vae_of(variant):
    """The VAE a trained variant denoises the latents of: its `vae`, the fine-tuned pipeline's own
    (named pipeline-<variant>), or None for a pixel model."""
    settings = config["variants"][variant]
    if settings.get("vae"):
        return settings["vae"]
    if pretrained(variant) and (Path(pretrained(variant)) / "vae" / "config.json").is_file():
        return f"pipeline-{variant}"
    return None


def vae_folder(name):
    """A VAE's AutoencoderKL folder: given, trained by the train_vae rule, or a fine-tuned pipeline's."""
    if name.startswith("pipeline-"):
        return f"{pretrained(name.removeprefix('pipeline-'))}/vae"
    settings = config["vaes"][name]
    return settings.get("pretrained") or f"{R}/vaes/{name}/model"


def latents_file(name):
    """The cache's latents under a VAE, encoded once per VAE and resolution."""
    return f"{R}/latents/{name}/train_{config['dataset']['resolution']}px.safetensors"


def train_inputs(wildcards):
    """What a variant's training reads besides the cache: the pipeline it fine-tunes or whose text
    encoder it trains against, its VAE and latents."""
    inputs = {}
    if pretrained(wildcards.variant):
        inputs["pretrained"] = pretrained(wildcards.variant)
    source = config["variants"][wildcards.variant].get("text_encoder")
    if source in config["variants"]:  # another variant's model: trained by this workflow or given
        inputs["text_encoder"] = model_folder(source)
    elif source:
        inputs["text_encoder"] = source
    name = vae_of(wildcards.variant)
    if name is not None:
        inputs.update(vae=vae_folder(name), latents=latents_file(name))
    return inputs


def dataset_csv(split):
    """train: the training images; valid: held-out patients' images (the copy baseline)."""
    if config["dataset"]["source"] == "phantoms":
        return f"{R}/data/phantoms/{split}.csv"
    if split == "valid" and config["dataset"]["heldout_csv"]:
        return config["dataset"]["heldout_csv"]
    if split != "train":
        raise WorkflowError("no held-out patients' CSV (dataset.heldout_csv) to cache")
    return config["dataset"]["csv"]


def heldout_baseline():
    """Whether samples are also matched against patients the model never saw."""
    if not has_reference_images() or not xray():
        return False
    return config["dataset"]["source"] == "phantoms" or bool(config["dataset"]["heldout_csv"])


def heldout_inputs(wildcards):
    if not heldout_baseline():
        return {}
    return {
        "heldout": f"{R}/embeddings/{wildcards.descriptor}/valid.parquet",
        "heldout_cache": f"{R}/cache/valid",
    }


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
    """The tables pull in every stage; the figures of the report come with their stages, and the
    loss curves, which no table reads, are asked for here."""
    losses = [f"{R}/models/{v}/loss.png" for v in variants() if trained(v)]
    histograms = [f"{R}/localize/{v}/neurons_per_{what}.png" for v in localized_variants()
                  for what in ("layer", "prompt")]
    return [f"{R}/tables/summary.md", *losses, *histograms]


def localized_variants():
    """Variants whose mitigations need NeMo's neurons (localization and re-trigger run for them)."""
    return [
        v
        for v in variants()
        if any(config["mitigations"][m]["kind"] in NEURON_MITIGATIONS for m in mitigations_of(v))
    ]


def benchmark_files(wildcards=None):
    """Benchmark TSVs of every job upstream of the tables, for the cost table."""
    names = ["cache_dataset/train"] if has_reference_images() else []
    if xray():
        names.append("train_classifier")
    if config["dataset"]["source"] == "phantoms":
        names.append("phantoms")
    names += [
        f"train_copydetect/{d}" for d in descriptors() if config["descriptors"][d]["kind"] == "copydetect"
    ]
    if has_reference_images():
        names += [f"embed_cache/{d}/train" for d in descriptors()]
    if heldout_baseline():
        names += ["cache_dataset/valid"] + [f"embed_cache/{d}/valid" for d in descriptors()]
    for v in variants():
        names += [f"detect/{v}"] + ([f"train/{v}"] if trained(v) else [])
        vae = vae_of(v) if trained(v) else None
        if vae is not None:
            names += [f"encode_latents/{vae}_{config['dataset']['resolution']}px"] + ([f"train_vae/{vae}"] if "train" in config["vaes"].get(vae, {}) else [])
    for v in localized_variants():
        names += [f"localize/{v}"] + ([f"retrigger/{v}"] if has_reference_images() else [])
    for v, m in sample_sets():
        names += [f"generate/{v}/{m}"] + ([f"fidelity/{v}/{m}"] if xray() else [])
        names += [f"embed_samples/{d}/{v}/{m}" for d in descriptors()]
        names += [f"clip_alignment/{v}/{m}"] if config["clip"]["model"] else []
        if has_reference_images():
            names += [f"match/{d}/{v}/{m}" for d in descriptors()]
    return [f"{R}/benchmarks/{n}.tsv" for n in dict.fromkeys(names)]  # variants may share a VAE


def descriptor_kind(name):
    return config["descriptors"][name]["kind"]


def descriptor_model_of(name):
    """The trained model folder a descriptor needs (copydetect), as named input."""
    if descriptor_kind(name) == "copydetect":
        return {"descriptor_model": f"{R}/descriptors/{name}/model"}
    return {}


def descriptor_model(wildcards):
    return descriptor_model_of(wildcards.descriptor)


def primary_descriptor_model(wildcards):
    return descriptor_model_of(primary())


def frechet_features():
    """The copydetect descriptor whose trunk is the Fréchet feature space (first one configured)."""
    names = [d for d in descriptors() if config["descriptors"][d]["kind"] == "copydetect"]
    return {"features": f"{R}/descriptors/{names[0]}/model"} if names else {}


def sample_check_inputs(wildcards):
    """For localize's sample check, only when it is on: the copy descriptor (its code, model and
    threshold) and the training images' descriptors, what the samples' copies are measured against."""
    if not config["localize"]["sample_check"]["enabled"]:
        return {}
    return {**descriptor_model_of(primary()),
            "calibration": f"{R}/descriptors/{primary()}/calibration.json",
            "training": f"{R}/embeddings/{primary()}/train.parquet"}


def localize_settings(wildcards):
    """localize's settings but the sample check's, which `sample_check_settings` gives only when it is on."""
    return {k: v for k, v in config["localize"].items() if k != "sample_check"}


def sample_check_settings(wildcards):
    """What the sample check draws with (None when it is off, so that nothing here reruns the search)."""
    settings = config["localize"]["sample_check"]
    if not settings["enabled"]:
        return None
    return {"samples": settings["samples"], "batch_size": settings["batch_size"], "quantile": settings["quantile"],
            "guidance": max(guidance_of(wildcards.variant, "nemo")), "steps": config["generate"]["steps"],
            "descriptor": primary(), "descriptor_settings": config["descriptors"][primary()]}


def localize_setting(key):
    """A localize setting as a generate param, for neuron mitigations only: other sample sets do not depend on it."""

    def param(wildcards):
        if config["mitigations"][wildcards.mitigation]["kind"] in NEURON_MITIGATIONS:
            return config["localize"][key]
        return None

    return param


def mitigation_inputs(wildcards):
    """Neuron mitigations read the localized neurons; Wen's embedding mitigation reads detection."""
    kind = config["mitigations"][wildcards.mitigation]["kind"]
    if kind in NEURON_MITIGATIONS:
        return {"neurons": f"{R}/localize/{wildcards.variant}/neurons.parquet"}
    if kind == "wen_embedding":
        return {"scores": f"{R}/detect/{wildcards.variant}/scores.parquet"}
    return {}


def table_sources(wildcards=None):
    """Every file the tables read, grouped by the view it feeds, with identifying columns."""
    matched = has_reference_images()
    sources = {
        "prompts": [(f"{R}/prompts/prompts.parquet", {})],
        "calibration": [(f"{R}/descriptors/{d}/calibration.json", {}) for d in descriptors() if matched],
        "match_prompts": [
            (f"{R}/matches/{d}/{v}/{m}_prompts.parquet", {"variant": v, "mitigation": m})
            for d in descriptors()
            for v, m in sample_sets()
            if matched
        ],
        "matches": [
            (f"{R}/matches/{d}/{v}/{m}.parquet", {"variant": v, "mitigation": m})
            for d in descriptors()
            for v, m in sample_sets()
            if matched
        ],
        "samples_primary": [(f"{R}/samples/{v}/{m}.parquet", {}) for v, m in sample_sets()],
        "embeddings": [
            (f"{R}/embeddings/{d}/{v}/{m}.parquet", {"descriptor": d, "variant": v, "mitigation": m})
            for d in descriptors()
            for v, m in sample_sets()
        ],
        "detection_metrics": [
            (f"{R}/validation/{v}/detection_metrics.parquet", {}) for v in variants()
        ],
        "neurons": [
            (f"{R}/localize/{v}/neurons.parquet", {"variant": v}) for v in localized_variants()
        ],
        "reference_stats": [
            (f"{R}/localize/{v}/reference_stats.parquet", {"variant": v}) for v in localized_variants()
        ],
        "scores": [(f"{R}/detect/{v}/scores.parquet", {"variant": v}) for v in variants()],
        "clip": [
            (f"{R}/clip/{v}/{m}.parquet", {"variant": v, "mitigation": m})
            for v, m in sample_sets()
            if config["clip"]["model"]
        ],
        "mitigation_info": [(f"{R}/samples/{v}/{m}_info.parquet", {}) for v, m in sample_sets()],
        "fidelity": [
            (f"{R}/fidelity/{v}/{m}.json", {"variant": v, "mitigation": m})
            for v, m in sample_sets()
            if xray()
        ],
        "classifier": [(f"{R}/fidelity/classifier/evaluation.json", {})] if xray() else [],
        "train_summary": [
            (f"{R}/models/{v}/train_summary.json", {"variant": v}) for v in variants() if trained(v)
        ],
        "retrigger": [
            (f"{R}/retrigger/{v}.parquet", {"variant": v}) for v in localized_variants() if matched
        ],
    }
    return sources


def table_inputs(wildcards):
    files = [path for group in table_sources().values() for path, _ in group]
    return files


def replication_inputs(wildcards):
    """What detection is validated against besides the ground truth: measured replication."""
    if not has_reference_images():
        return {}
    d0 = primary()
    return {
        "replication": f"{R}/matches/{d0}/{wildcards.variant}/none_prompts.parquet",
        "matches": f"{R}/matches/{d0}/{wildcards.variant}/none.parquet",
        "calibration": f"{R}/descriptors/{d0}/calibration.json",
        "cache": f"{R}/cache/train",
    }


def contact_sheet_inputs(wildcards):
    """What a sample set's contact sheet pairs its samples with: their nearest training images
    (none on the Stable Diffusion track without originals: the sheet shows the samples alone)."""
    if not has_reference_images():
        return {}
    return {
        "matches": f"{R}/matches/{primary()}/{wildcards.variant}/{wildcards.mitigation}.parquet",
        "cache": f"{R}/cache/train",
        "calibration": f"{R}/descriptors/{primary()}/calibration.json",
    }


def report_figures(wildcards=None):
    """The report's figures no other job reads; the tables list them, which brings them into the run."""
    preview = [f"{R}/cache/train_preview.png"] if has_reference_images() else []
    return preview + [f"{R}/samples/{v}/{m}_sheet.png" for v, m in sample_sets()]

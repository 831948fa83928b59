"""Config validation: JSON schema (with defaults) plus the cross-field checks a schema cannot say.

Errors name the key (`train.steps`) and what is expected, so a bad value stops the run before any
job starts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mnemo.detect.names import detector_names
from mnemo.external import (
    ExternalWeightsError,
    check_clip_folder,
    check_pipeline_folder,
    check_torchscript_file,
    read_json,
)
from mnemo.mitigate.kinds import MITIGATION_KINDS


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the key."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _with_defaults(validator_class):
    from jsonschema import validators

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def _describe(error) -> str:
    if error.validator in ("oneOf", "anyOf") and error.context:
        # describe the branch the value was meant for: the one whose `kind`/type did match
        branches: dict[int, list] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        meant = [errs for errs in branches.values()
                 if not any(e.validator in ("const", "enum", "type") and len(e.relative_path) <= 1
                            and (not e.relative_path or e.relative_path[0] == "kind") for e in errs)]
        if len(meant) == 1:
            return _describe(min(meant[0], key=lambda e: len(e.absolute_path)))
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = f"{key}." if error.absolute_path else ""
        names = ", ".join(f"'{where}{e}'" for e in extra) or error.message
        return f"unknown config key {names}; allowed here: {', '.join(allowed)}"
    expected = error.schema.get("description")
    hint = f" (expected: {expected})" if expected else ""
    return f"config key '{key}': {error.message}{hint}"


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def validate(config: dict[str, Any], schema: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Fill defaults in place and validate; raise ConfigError naming the first bad key."""
    from jsonschema import Draft202012Validator

    if not isinstance(schema, Mapping):
        schema = load_schema(schema)
    validator = _with_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_describe(errors[0]))
    derive(config)
    check(config)
    select_variants(config)
    return config


def select_variants(config: dict[str, Any]) -> None:
    """Keep only `run_variants` (all when null): a study or a quick look runs one variant of a
    merged config without deleting the others from it. Called after `check`, which checks them all."""
    names = config.get("run_variants")
    if names is None:
        return
    unknown = [name for name in names if name not in config.get("variants", {})]
    if unknown:
        raise ConfigError(f"config key 'run_variants': {', '.join(map(repr, unknown))} not defined under 'variants' "
                          f"(defined: {', '.join(config.get('variants', {}))})")
    for name in names:
        donor = config["variants"][name].get("text_encoder")
        if donor in config["variants"] and donor not in names:
            raise ConfigError(f"config key 'run_variants': variant '{name}' takes the text encoder of '{donor}': "
                              "run that one too")
    config["variants"] = {name: config["variants"][name] for name in names}


def derive(config: dict[str, Any]) -> None:
    """Fill values that follow from others, so that a user sets each thing once: on the X-ray
    track the UNet is built for the cached images, so an unset `model.unet.resolution` follows
    `dataset.resolution` (a value set in both places must agree, see `check`)."""
    dataset = config.get("dataset", {})
    unet = config.get("model", {}).get("unet")
    if dataset.get("source") in ("phantoms", "chexpert") and unet is not None and "resolution" in dataset:
        unet.setdefault("resolution", dataset["resolution"])


def variant_train_config(config: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """Global `train` settings with the variant's overrides on top."""
    merged = copy.deepcopy(dict(config["train"]))
    merged.update(copy.deepcopy(config["variants"][variant].get("train", {})))
    return merged


def _check_prompt_file(key: str, path: str) -> None:
    """Read every row of an SD-track prompt file now (cheap), so that a malformed row stops the run
    before any job, naming the file, the line and the problem."""
    from mnemo.data.promptset import read_prompt_file

    try:
        read_prompt_file(path, memorized=key == "memorized")
    except ValueError as error:
        raise ConfigError(f"config key 'prompts.{key}': {error}") from None


def _check_text_column(csv_path: str, column: str) -> None:
    """The free-text column must be in the CSV's header (read alone: the CSV may be large)."""
    from mnemo.data.chexpert import csv_header

    header = csv_header(csv_path)
    if column not in header:
        raise ConfigError(f"config key 'dataset.text_column': {csv_path} has no column {column!r} "
                          f"(its columns: {', '.join(header)})")


def _check_trained_variants(config: Mapping[str, Any]) -> None:
    """Latent and fine-tuned variants train on the X-ray cache; each VAE is a folder or a recipe."""
    vaes = config.get("vaes", {})
    for name, vae in vaes.items():
        if ("pretrained" in vae) == ("train" in vae):
            raise ConfigError(f"config key 'vaes.{name}': give exactly one of pretrained (a local AutoencoderKL "
                              "folder) or train (a VAE the workflow trains on the cache)")
        if "pretrained" in vae and not (Path(vae["pretrained"]) / "config.json").is_file():
            raise ConfigError(f"config key 'vaes.{name}.pretrained': {vae['pretrained']} is not a diffusers "
                              "AutoencoderKL folder (no config.json)")
    xray = config.get("dataset", {}).get("source") in ("phantoms", "chexpert")
    trains = [("train", config.get("train", {}))]
    trains += [(f"variants.{name}.train", v["train"]) for name, v in config.get("variants", {}).items() if "train" in v]
    for key, recipe in trains:
        wen = recipe.get("filter") or {}
        if "threshold" in wen and "percentile" in wen:
            raise ConfigError(f"config key '{key}.filter': give threshold (a fixed cut, as Wen et al.'s code) "
                              "or percentile (calibrated in the warm-up steps), not both")
    for name, variant in config.get("variants", {}).items():
        if variant.get("vae") is not None and variant["vae"] not in vaes:
            raise ConfigError(f"config key 'variants.{name}.vae': '{variant['vae']}' is not defined under 'vaes' "
                              f"(defined: {', '.join(vaes) or 'none'})")
        trains = "train" in variant or not variant.get("pretrained")
        if not xray and variant.get("vae"):
            raise ConfigError(f"config key 'variants.{name}.vae': latent variants train on an X-ray dataset "
                              "(dataset.source phantoms or chexpert)")
        if not xray and variant.get("pretrained") and "train" in variant:
            raise ConfigError(f"config key 'variants.{name}.train': fine-tuning needs an X-ray dataset "
                              "(dataset.source phantoms or chexpert)")
        if variant.get("text_encoder"):
            if variant.get("pretrained"):
                raise ConfigError(f"config key 'variants.{name}.text_encoder': a pretrained pipeline has its own "
                                  "text encoder; give pretrained or text_encoder, not both")
            if not xray:
                raise ConfigError(f"config key 'variants.{name}.text_encoder': training against a given text "
                                  "encoder needs an X-ray dataset (dataset.source phantoms or chexpert)")
            _check_text_encoder_source(config["variants"], name)
        if variant.get("vae") and not trains:
            raise ConfigError(f"config key 'variants.{name}.vae': a pretrained pipeline used as it is has its "
                              "own VAE; give train to fine-tune it in this one's latent space")


def _check_text_encoder_source(variants: Mapping[str, Any], name: str) -> None:
    """`text_encoder` names another variant (one with its own encoder) or a pipeline folder."""
    source = variants[name]["text_encoder"]
    if source in variants:
        if source == name or variants[source].get("text_encoder") in variants:
            raise ConfigError(f"config key 'variants.{name}.text_encoder': '{source}' must be another variant "
                              "that learns or has its own text encoder")
        return
    root = Path(source)
    if not (root / "text_encoder" / "config.json").is_file() or not (root / "tokenizer").is_dir():
        raise ConfigError(f"config key 'variants.{name}.text_encoder': {root} is neither a variant nor a folder "
                          "with text_encoder/config.json and tokenizer/ (a diffusers pipeline folder)")


def _vae_downsampling(vae: Mapping[str, Any]) -> int:
    """How many pixels per latent a VAE entry (pretrained folder or recipe) makes: 2^(levels - 1)."""
    if "pretrained" in vae:
        levels = len(read_json(Path(vae["pretrained"]) / "config.json").get("block_out_channels", [0] * 4))
    else:
        levels = len(vae.get("train", {}).get("model", {}).get("block_out_channels", [32, 64]))
    return 2 ** (levels - 1)


def _check_latent_resolution(config: Mapping[str, Any]) -> None:
    """A latent or fine-tuned variant trains on the cache's latents: dataset.resolution divided by
    the VAE's downsampling must be the size its UNet denoises. Checked now, not after caching."""
    dataset = config.get("dataset", {})
    resolution = dataset.get("resolution")
    if dataset.get("source") not in ("phantoms", "chexpert") or not resolution:
        return
    vaes = config.get("vaes", {})
    levels = len(config.get("model", {}).get("unet", {}).get("block_out_channels", []))
    for name, variant in config.get("variants", {}).items():
        pretrained = variant.get("pretrained")
        if pretrained and "train" not in variant:
            continue  # used as it is: never sees the cache
        if pretrained:
            root = Path(pretrained)
            size = read_json(root / "unet" / "config.json").get("sample_size")
            if variant.get("vae"):
                down = _vae_downsampling(vaes[variant["vae"]])
            elif (root / "vae" / "config.json").is_file():
                down = _vae_downsampling({"pretrained": root / "vae"})
            else:
                down = 1
            if isinstance(size, int) and resolution != size * down:
                raise ConfigError(
                    f"config key 'dataset.resolution': {resolution}, but variant '{name}' fine-tunes a UNet of "
                    f"sample_size {size} under a VAE that downsamples {down}x, so it trains at {size * down} px; "
                    f"set dataset.resolution: {size * down}")
        elif variant.get("vae"):
            down = _vae_downsampling(vaes[variant["vae"]])
            latent = resolution / down
            factor = 2 ** max(levels - 1, 0)
            if latent != int(latent) or int(latent) % factor:
                raise ConfigError(
                    f"config key 'dataset.resolution': {resolution} px under VAE '{variant['vae']}' (downsamples "
                    f"{down}x) gives {latent:g}x{latent:g} latents, but variant '{name}''s UNet has {levels} levels "
                    f"and needs a latent size that is a multiple of {factor}")


def check(config: Mapping[str, Any]) -> None:
    """Cross-field rules."""
    _check_trained_variants(config)
    model = config.get("model", {})
    unet = model.get("unet", {})
    blocks = unet.get("block_out_channels", [])
    if blocks and len(unet.get("cross_attention", [])) != len(blocks):
        raise ConfigError(
            "config key 'model.unet.cross_attention': needs one flag per entry of "
            f"model.unet.block_out_channels ({len(blocks)})"
        )
    groups = unet.get("norm_num_groups")
    for width in blocks:
        if groups and width % groups:
            raise ConfigError(
                f"config key 'model.unet.norm_num_groups': {groups} must divide every "
                f"block_out_channels entry (got {width})"
            )
    resolution = config.get("dataset", {}).get("resolution")
    if resolution and blocks:
        factor = 2 ** (len(blocks) - 1)
        if resolution % factor:
            raise ConfigError(
                f"config key 'dataset.resolution': {resolution} must be a multiple of {factor} for a "
                f"UNet with {len(blocks)} blocks"
            )
    dataset = config.get("dataset", {})
    trained_at = unet.get("resolution")
    if dataset.get("source") in ("phantoms", "chexpert") and resolution and trained_at and resolution != trained_at:
        raise ConfigError(
            f"config key 'dataset.resolution': {resolution} differs from model.unet.resolution "
            f"{trained_at}; the model trains on the cached images, so the two must be equal"
        )
    if dataset.get("source") == "chexpert":
        for key in ("csv", "image_root"):
            if not dataset.get(key):
                raise ConfigError(f"config key 'dataset.{key}': required when dataset.source is 'chexpert'")
        if not Path(dataset["csv"]).is_file():
            raise ConfigError(f"config key 'dataset.csv': file {dataset['csv']} does not exist")
        if not Path(dataset["image_root"]).is_dir():
            raise ConfigError(f"config key 'dataset.image_root': folder {dataset['image_root']} does not exist")
        if dataset.get("text_column"):
            _check_text_column(dataset["csv"], dataset["text_column"])
        heldout = dataset.get("heldout_csv")
        if heldout and not Path(heldout).is_file():
            raise ConfigError(f"config key 'dataset.heldout_csv': file {heldout} does not exist")
        if heldout and Path(heldout).resolve() == Path(dataset["csv"]).resolve():
            raise ConfigError("config key 'dataset.heldout_csv': the training CSV itself; give patients the "
                              "model does not train on (e.g. CheXpert's valid.csv)")
        if heldout and dataset.get("text_column"):
            _check_text_column(heldout, dataset["text_column"])
    elif dataset.get("heldout_csv"):
        raise ConfigError(f"config key 'dataset.heldout_csv': only for dataset.source chexpert (phantoms have "
                          f"their own held-out split; dataset.source is {dataset.get('source')!r})")
    elif dataset.get("text_column"):
        raise ConfigError(f"config key 'dataset.text_column': only a chexpert CSV has free text "
                          f"(dataset.source is {dataset.get('source')!r})")
    if dataset.get("source") == "prompts":
        prompts = config.get("prompts", {})
        for key in ("memorized", "unmemorized"):
            if not prompts.get(key):
                raise ConfigError(f"config key 'prompts.{key}': required when dataset.source is 'prompts'")
            if not Path(prompts[key]).is_file():
                raise ConfigError(f"config key 'prompts.{key}': file {prompts[key]} does not exist")
            _check_prompt_file(key, prompts[key])
        if prompts.get("originals") and not Path(prompts["originals"]).is_dir():
            raise ConfigError(f"config key 'prompts.originals': folder {prompts['originals']} does not exist")
        for name, variant in config.get("variants", {}).items():
            if not variant.get("pretrained"):
                raise ConfigError(f"config key 'variants.{name}.pretrained': dataset.source 'prompts' has no "
                                  "training data, so every variant needs a pretrained model folder")
        for name, descriptor in config.get("descriptors", {}).items():
            if descriptor.get("kind") == "copydetect":
                raise ConfigError(f"config key 'descriptors.{name}': copydetect is trained on the X-ray cache; "
                                  "use sscd or pixel on the prompts track")
    for name, variant in config.get("variants", {}).items():
        path = variant.get("pretrained")
        if path:  # the SD track decodes latents; an X-ray model of ours may work in pixels (no vae/)
            latent = dataset.get("source") == "prompts" or (Path(path) / "vae").exists()
            try:
                check_pipeline_folder(path, latent=latent)
            except ExternalWeightsError as error:
                raise ConfigError(f"config key 'variants.{name}.pretrained': {error}") from None
    _check_latent_resolution(config)
    clip = config.get("clip", {}).get("model")
    if clip:
        try:
            check_clip_folder(clip)
        except ExternalWeightsError as error:
            raise ConfigError(f"config key 'clip.model': {error}") from None
    mitigations = config.get("mitigations", {})
    for name, variant in config.get("variants", {}).items():
        for mitigation in variant.get("mitigations", []):
            if mitigation not in mitigations:
                raise ConfigError(
                    f"config key 'variants.{name}.mitigations': '{mitigation}' is not defined under "
                    f"'mitigations' (defined: {', '.join(mitigations)})"
                )
    for name, mitigation in mitigations.items():
        if mitigation.get("kind") not in MITIGATION_KINDS:  # the schema and the library disagree
            raise ConfigError(f"config key 'mitigations.{name}.kind': {mitigation.get('kind')!r} is not a "
                              f"mitigation kind of this library (one of {', '.join(MITIGATION_KINDS)})")
    detect = config.get("detect", {})
    detectors = detector_names(detect.get("wen_n", []))
    grid = config.get("report", {}).get("grid_detector")
    if grid and grid not in detectors:
        raise ConfigError(f"config key 'report.grid_detector': '{grid}' is not a detector of this config "
                          f"(one of {', '.join(detectors)})")
    if detect.get("wen_n") and max(detect["wen_n"]) > detect.get("generations", 0):
        raise ConfigError("config key 'detect.wen_n': every n must be at most detect.generations")
    localize = config.get("localize", {})
    evaluation_seed = config.get("generate", {}).get("seed")
    if localize.get("seed") is not None and localize.get("seed") == evaluation_seed:
        raise ConfigError(f"config key 'localize.seed': {localize['seed']} equals generate.seed; localization "
                          "must not see the seeds its mitigations are evaluated on (paper: localize 1, evaluate 2)")
    if "nemo_timestep" in detect and detect["nemo_timestep"] >= detect.get("nemo_steps", 50):
        raise ConfigError(f"config key 'detect.nemo_timestep': {detect['nemo_timestep']} is not a step of the "
                          f"{detect.get('nemo_steps', 50)}-step schedule (detect.nemo_steps)")
    published = localize.get("published")
    if published and not Path(published).is_file():
        raise ConfigError(f"config key 'localize.published': {published!r} not found; give the path of NeMo's "
                          "per-prompt neuron file (memorization_statistics_v1_4.csv) or null")
    stats_file = localize.get("reference_stats")
    if stats_file and not Path(stats_file).is_file():
        raise ConfigError(f"config key 'localize.reference_stats': {stats_file!r} not found; give the path of a "
                          "(means, stds) .pt file such as NeMo's statistics_additional_laion_prompts_v1_4.pt")
    signal_step = localize.get("signal_step", 0)
    if "steps" in detect and signal_step >= detect["steps"]:
        raise ConfigError(f"config key 'localize.signal_step': {signal_step} is not a step of the "
                          f"{detect['steps']}-step schedule (detect.steps); at most {detect['steps'] - 1}")
    descriptors = config.get("descriptors", {})
    primary = config.get("match", {}).get("primary")
    if descriptors and primary not in descriptors:
        raise ConfigError(
            f"config key 'match.primary': '{primary}' is not defined under 'descriptors' "
            f"(defined: {', '.join(descriptors)})"
        )
    for name, descriptor in descriptors.items():
        if descriptor.get("kind") == "sscd":
            weights = descriptor.get("weights")
            if not weights or not Path(weights).is_file():
                raise ConfigError(
                    f"config key 'descriptors.{name}.weights': SSCD TorchScript file {weights!r} not found; "
                    "download e.g. sscd_disc_mixup.torchscript.pt from "
                    "github.com/facebookresearch/sscd-copy-detection and give its path"
                )
            try:
                check_torchscript_file(weights)
            except ExternalWeightsError as error:
                raise ConfigError(f"config key 'descriptors.{name}.weights': {error}") from None

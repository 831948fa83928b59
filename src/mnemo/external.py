"""External weights given by path (a diffusers pipeline folder, an SSCD TorchScript file), checked
when the config is, without loading them: a broken folder stops the run before any job, naming
what is wrong, instead of failing deep inside diffusers, transformers or torch hours later.

Import-light (json, zipfile): the workflow runs these checks whenever it parses the config.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

SD14_HINT = ("For Stable Diffusion v1.4 download CompVis/stable-diffusion-v1-4 in diffusers format (e.g. "
             "`huggingface-cli download CompVis/stable-diffusion-v1-4`) and give the local folder; a model in "
             "the Hugging Face cache is its snapshots/<hash> folder "
             "(~/.cache/huggingface/hub/models--CompVis--stable-diffusion-v1-4/snapshots/<hash>)")
# Per component: the files that name it, and the weight files its loader reads (none: no weights).
COMPONENTS = {
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                                "diffusion_pytorch_model.safetensors.index.json")),
    "text_encoder": (("config.json",), ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                                        "pytorch_model.bin.index.json")),
    "tokenizer": (("tokenizer_config.json", "tokenizer.json", "vocab.json"), ()),
    "scheduler": (("scheduler_config.json",), ()),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
}
# What the detectors (Wen's magnitude, NeMo's noise difference) and the DDIM sampler read: the noise.
PREDICTION_TYPES = ("epsilon",)


class ExternalWeightsError(ValueError):
    """A user-given weights path cannot be what the config says it is."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExternalWeightsError(f"{path}: unreadable JSON ({error})") from None


def check_pipeline_folder(path: str | Path, latent: bool = True) -> None:
    """A diffusers text-to-image folder the workflow can load and run: unet, text_encoder,
    tokenizer, scheduler (and vae for a `latent` model) with their weights; a UNet that denoises
    the VAE's latents (not an inpainting UNet's latents + mask + masked image); cross-attention as
    wide as the text encoder; a scheduler predicting the noise (epsilon). Raises ExternalWeightsError."""
    root = Path(path)
    if not root.is_dir():
        raise ExternalWeightsError(f"{root} is not a folder. {SD14_HINT}")
    if not (root / "unet").is_dir() and any(root.glob("snapshots/*/unet")):
        raise ExternalWeightsError(f"{root} is a Hugging Face cache entry: give its snapshots/<hash> folder, "
                                   f"e.g. {sorted(root.glob('snapshots/*'))[0]}")
    needed = [name for name in COMPONENTS if latent or name != "vae"]
    for name in needed:
        names, weights = COMPONENTS[name]
        folder = root / name
        if not any((folder / file).is_file() for file in names):
            raise ExternalWeightsError(
                f"{root}: no {name}/ component ({' or '.join(names)} missing); the workflow loads unet, "
                f"text_encoder, tokenizer, scheduler{' and vae' if latent else ''} from the folder, so all must be "
                f"there. {SD14_HINT}")
        if weights and not any((folder / file).is_file() for file in weights):
            variants = sorted(p.name for p in folder.glob("*.*.safetensors")) + sorted(p.name for p in folder.glob("*.*.bin"))
            found = f" (only {', '.join(variants)}: download the full-precision files too)" if variants else ""
            raise ExternalWeightsError(f"{root}/{name}: no weights ({' or '.join(weights[:2])}){found}")
    unet = read_json(root / "unet" / "config.json")
    in_channels, out_channels = unet.get("in_channels", 4), unet.get("out_channels", 4)
    if in_channels != out_channels:
        kind = " an inpainting UNet (latents + mask + masked image)," if in_channels == out_channels + 5 else ""
        raise ExternalWeightsError(
            f"{root}/unet/config.json: in_channels {in_channels} but out_channels {out_channels}:{kind} not a "
            "text-to-image UNet that denoises its own output; give a text-to-image pipeline such as SD v1.4")
    if latent:
        latent_channels = read_json(root / "vae" / "config.json").get("latent_channels", 4)
        if latent_channels != in_channels:
            raise ExternalWeightsError(f"{root}: the UNet takes {in_channels} channels, the VAE makes "
                                       f"{latent_channels}-channel latents")
    text = read_json(root / "text_encoder" / "config.json")
    width = text.get("hidden_size") or text.get("text_config", {}).get("hidden_size")
    cross = unet.get("cross_attention_dim")
    if width and cross and cross != width:
        raise ExternalWeightsError(f"{root}: the UNet's cross_attention_dim {cross} differs from the text encoder's "
                                   f"hidden_size {width}")
    scheduler = root / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        prediction = read_json(scheduler).get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ExternalWeightsError(
                f"{scheduler}: prediction_type {prediction!r} is not supported: Wen's magnitude, NeMo's noise "
                "difference and the sampler read a noise (epsilon) prediction, as SD v1.x makes; a v-prediction "
                "model (e.g. SD 2.x at 768 px) would run as if it predicted noise, so it is refused")


def check_clip_folder(path: str | Path) -> None:
    """A transformers CLIPModel folder with its processor: config.json of a CLIP model, weights, a
    tokenizer and an image processor config."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise ExternalWeightsError(f"{root}: no config.json; give a transformers CLIPModel folder, e.g. "
                                   "openai/clip-vit-large-patch14 downloaded (its snapshots/<hash> folder)")
    kind = read_json(root / "config.json").get("model_type")
    if kind != "clip":
        raise ExternalWeightsError(f"{root}/config.json: model_type {kind!r}, not a CLIP model ('clip')")
    wanted = {"weights": ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),
              "tokenizer": ("tokenizer.json", "vocab.json", "tokenizer_config.json"),
              "image processor": ("preprocessor_config.json", "processor_config.json")}
    for what, names in wanted.items():
        if not any((root / name).is_file() for name in names):
            raise ExternalWeightsError(f"{root}: no {what} ({' or '.join(names)})")


def check_torchscript_file(path: str | Path) -> None:
    """A file `torch.jit.load` reads: a zip archive with TorchScript code (`<name>/code/`) and
    constants, not a state dict (`torch.save`), a pickled module or a safetensors file."""
    file = Path(path)
    if not zipfile.is_zipfile(file):
        kind = " (a safetensors file)" if file.suffix == ".safetensors" or _safetensors_header(file) else ""
        raise ExternalWeightsError(f"{file} is not a TorchScript archive{kind}; SSCD ships as TorchScript, "
                                   "e.g. sscd_disc_mixup.torchscript.pt")
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
    if not any("/code/" in name for name in names) or not any(name.endswith("constants.pkl") for name in names):
        raise ExternalWeightsError(f"{file} is a torch.save archive (weights or a pickled module), not TorchScript "
                                   "(torch.jit.save); SSCD ships as TorchScript, e.g. sscd_disc_mixup.torchscript.pt")


def _safetensors_header(file: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    with file.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"

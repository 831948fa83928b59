"""Tiny random Stable-Diffusion-shaped components, built and saved by the tests (no downloads)."""

from __future__ import annotations

import csv
import json
import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEMORIZED = [
    ("a painting of the great wave", "VM"), ("the mona lisa by leonardo", "VM"),
    ("portrait of a smiling man wearing a hat", "TM"), ("living room with a grey sofa", "TM"),
]
UNMEMORIZED = ["a cat on a mat", "mountains at sunset", "a red bicycle", "two dogs playing in snow",
               "a bowl of fruit on a table", "city street at night"]


def character_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,'-!?":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_pipeline(root: Path) -> Path:
    """A diffusers SD folder: unet (16x16 latents, cross-attention), vae (x2), CLIP text, PNDM."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = character_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=77,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False)
    root.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text_encoder.save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


class _TinySSCD(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x)).clamp_min(1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        return torch.nn.functional.normalize(features, dim=1)


def build_sscd(path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.script(_TinySSCD()).save(str(path))
    return path


def write_prompt_files(root: Path) -> tuple[Path, Path, Path]:
    """NeMo-format CSVs (';'-separated) and a folder of 'original' images named by Index."""
    root.mkdir(parents=True, exist_ok=True)
    memorized, unmemorized, originals = root / "memorized.csv", root / "unmemorized.csv", root / "originals"
    with memorized.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["", "Caption", "URL", "type", "mean_sscd", "max_sscd", "Index"])
        for i, (caption, kind) in enumerate(MEMORIZED):
            writer.writerow([i, caption, f"http://example.org/{i}.jpg", kind, 0.9, 0.95, 100 + i])
    with unmemorized.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["Caption", "URL", "Index"])
        for i, caption in enumerate(UNMEMORIZED):
            writer.writerow([caption, f"http://example.org/u{i}.jpg", 200 + i])
    originals.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(len(MEMORIZED)):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(originals / f"{100 + i}.png")
    return memorized, unmemorized, originals


def write_wen_file(path: Path) -> Path:
    """Wen's memorized prompts (one {caption, index, url} object per line) for MEMORIZED, with the
    Index the NeMo CSV gives them; saved under whatever name `path` has (Wen's file is often .json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"caption": caption, "index": 100 + i, "url": f"http://example.org/{i}.jpg"})
                            + "\n" for i, (caption, _) in enumerate(MEMORIZED)))
    return path


def stand_in_pipeline(root: Path) -> Path:
    """A diffusers SD folder layout with SD v1.x's configs and empty weight files: enough for the
    config check and for planning jobs (snakemake -n), not to load a model."""
    configs = {
        "unet/config.json": {"in_channels": 4, "out_channels": 4, "cross_attention_dim": 32},
        "vae/config.json": {"latent_channels": 4},
        "text_encoder/config.json": {"hidden_size": 32},
        "tokenizer/tokenizer_config.json": {},
        "scheduler/scheduler_config.json": {"prediction_type": "epsilon"},
    }
    for name, config in configs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(config))
    for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        (root / name).write_bytes(b"")
    return root


def build_clip(root: Path) -> Path:
    """A tiny random transformers CLIPModel folder with its processor (character tokenizer, 32 px)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = character_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    root.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(root)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(root)
    return root


def stand_in_clip(root: Path) -> Path:
    """A CLIPModel folder layout (config, empty weights, tokenizer and image processor configs):
    enough for the config check and planning jobs, not to load a model."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "clip"}))
    for name in ("model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        (root / name).write_text("")
    return root


def latent_variants_config(tmp_path):
    """Config over config/test.yaml with a latent variant (on a VAE the workflow trains) and a tiny
    SD-shaped pipeline fine-tuned on the cache (tests/test_latent_finetune.py, test_reruns.py)."""
    pipeline = build_pipeline(tmp_path / "sd")  # 16x16x4 latents, VAE x2: 32 px
    return {
        "dataset": {"resolution": 32},
        "model": {"unet": {"resolution": 32}},
        "vaes": {"tiny_vae": {"train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 2,
                                        "model": {"block_out_channels": [8, 16], "latent_channels": 4,
                                                  "norm_num_groups": 4}}}},
        "variants": {
            "latent": {"vae": "tiny_vae", "guidance": [1, 3], "mitigations": ["none", "nemo"]},
            "finetuned": {"pretrained": str(pipeline),  # with Wen's training-time filter
                          "train": {"steps": 3, "learning_rate": 1e-4, "filter": {"warmup_steps": 1, "percentile": 50}},
                          "guidance": [1, 3], "mitigations": ["none", "nemo"]},
        },
        "localize": {"sample_check": {"enabled": False}},
    }

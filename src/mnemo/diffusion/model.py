"""Text-to-image diffusion models: construction from config, save/load, prompt encoding.

`DiffusionModel` bundles what every stage needs (UNet, text encoder, tokenizer, noise scheduler
and, for latent models such as Stable Diffusion, a VAE) behind one small interface, so detection,
localization and mitigation code never asks which track it runs on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MODEL_INDEX = "model_index.json"


@dataclass
class UNetConfig:
    """Explicit UNet recipe; defaults are the CPU demo model (cross-attention at 16² and 8²)."""

    resolution: int = 32
    channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    cross_attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        self.cross_attention = tuple(self.cross_attention)
        if len(self.cross_attention) != len(self.block_out_channels):
            raise ValueError("model.unet.cross_attention needs one flag per block_out_channels entry")
        for width in self.block_out_channels:
            if width % self.norm_num_groups:
                raise ValueError(
                    f"model.unet.norm_num_groups={self.norm_num_groups} must divide every "
                    f"block_out_channels entry (got {width})"
                )
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.resolution % factor:
            raise ValueError(
                f"model.unet.resolution={self.resolution} must be a multiple of {factor} "
                f"for {len(self.block_out_channels)} UNet blocks"
            )


@dataclass
class TextEncoderConfig:
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    intermediate_size: int = 128
    max_length: int = 16


@dataclass
class SchedulerConfig:
    """The noise schedule; Stable Diffusion's is scaled_linear 0.00085-0.012, leading, steps_offset 1."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    timestep_spacing: str = "trailing"
    beta_start: float = 0.0001  # linear and scaled_linear only
    beta_end: float = 0.02
    steps_offset: int = 0


@dataclass
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ModelConfig:
        return cls(
            unet=UNetConfig(**config.get("unet", {})),
            text_encoder=TextEncoderConfig(**config.get("text_encoder", {})),
            scheduler=SchedulerConfig(**config.get("scheduler", {})),
        )


def build_unet(config: UNetConfig, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in config.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(config.cross_attention))
    return UNet2DConditionModel(
        sample_size=config.resolution,
        in_channels=config.channels,
        out_channels=config.channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=config.attention_heads,  # diffusers' name for the number of heads
        norm_num_groups=config.norm_num_groups,
    )


def build_text_encoder(config: TextEncoderConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            max_position_embeddings=config.max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def build_noise_scheduler(config: SchedulerConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        steps_offset=config.steps_offset,
        prediction_type="epsilon",
        clip_sample=True,
        timestep_spacing=config.timestep_spacing,
    )


def load_text_encoder(root: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, int]:
    """A pipeline folder's `text_encoder/` and `tokenizer/`, and the prompt length they take."""
    from transformers import AutoTokenizer, CLIPTextModel

    root = Path(root)
    text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", torch_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    return text_encoder, tokenizer, min(int(tokenizer.model_max_length), text_encoder.config.max_position_embeddings)


@dataclass
class DiffusionModel:
    """UNet + text encoder + tokenizer + scheduler (+ VAE for latent models)."""

    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any = None
    max_length: int = 77
    image_channels: int | None = None  # channels of the training images when a VAE's differ (grey X-rays)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig, prompts: list[str], seed: int = 0,
                    text_encoder_from: str | Path | None = None) -> DiffusionModel:
        """A fresh, randomly initialised pixel-space model whose vocabulary covers `prompts`, or, with
        `text_encoder_from`, a fresh UNet that cross-attends to that folder's text encoder (SD's setup:
        a pretrained encoder, a UNet trained against it)."""
        if text_encoder_from is not None:
            text_encoder, tokenizer, max_length = load_text_encoder(text_encoder_from)
            torch.manual_seed(seed)
            unet = build_unet(config.unet, int(text_encoder.config.hidden_size))
        else:
            from mnemo.data.prompts import build_tokenizer

            tokenizer = build_tokenizer(prompts, config.text_encoder.max_length)
            torch.manual_seed(seed)
            text_encoder = build_text_encoder(config.text_encoder, tokenizer)
            unet = build_unet(config.unet, config.text_encoder.hidden_size)
            max_length = config.text_encoder.max_length
        return cls(
            unet=unet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=build_noise_scheduler(config.scheduler),
            max_length=max_length,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> DiffusionModel:
        """Load our saved models and diffusers Stable Diffusion folders alike (local paths only)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        root = Path(path)
        if not (root / "unet" / "config.json").is_file():
            raise FileNotFoundError(
                f"{root} is not a diffusers model folder (no unet/config.json). For Stable Diffusion "
                "v1.4 download CompVis/stable-diffusion-v1-4 (diffusers format) and give its local path."
            )
        unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=dtype)
        text_encoder, tokenizer, max_length = load_text_encoder(root, dtype)
        scheduler = DDPMScheduler.from_pretrained(root / "scheduler")
        vae = None
        if (root / "vae" / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=dtype).to(device)
        index = json.loads((root / MODEL_INDEX).read_text()) if (root / MODEL_INDEX).is_file() else {}
        model = cls(
            unet=unet.to(device),
            text_encoder=text_encoder.to(device),
            tokenizer=tokenizer,
            scheduler=scheduler,
            vae=vae,
            max_length=max_length,
            image_channels=index.get("mnemo_image_channels"),
        )
        model.eval()
        return model

    def save_pretrained(self, path: str | Path) -> None:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(root / "unet")
        self.text_encoder.save_pretrained(root / "text_encoder")
        self.tokenizer.save_pretrained(root / "tokenizer")
        self.scheduler.save_pretrained(root / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(root / "vae")
        index = {
            "_class_name": "mnemo.DiffusionModel",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
        }
        if self.vae is not None:
            index["vae"] = ["diffusers", "AutoencoderKL"]
        if self.image_channels is not None:
            index["mnemo_image_channels"] = self.image_channels
        (root / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")

    # -- use ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of what the UNet denoises (latents for SD, pixels for ours)."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, height, width)

    def eval(self) -> DiffusionModel:
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.eval()
                module.requires_grad_(False)
        return self

    def to(self, device: str | torch.device) -> DiffusionModel:
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.to(device)
        return self

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        from mnemo.data.prompts import tokenize

        return tokenize(self.tokenizer, prompts, self.max_length).to(self.device)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompt strings -> encoder_hidden_states (N, tokens, cross_attention_dim)."""
        return self.text_encoder(self.token_ids(prompts))[0]

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised samples -> uint8 images (N, C, H, W); latent models go through the VAE."""
        if self.vae is not None:
            x = self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            if self.image_channels == 1 and x.shape[1] != 1:  # an RGB VAE fine-tuned on grey X-rays
                x = x.mean(dim=1, keepdim=True)
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> what the UNet denoises (scaled VAE latents for latent models)."""
        x = images.to(self.device, torch.float32) / 127.5 - 1
        if self.vae is None:
            return x.to(self.dtype)
        if x.shape[1] < self.vae.config.in_channels:  # grey images into an RGB VAE
            x = x.expand(-1, self.vae.config.in_channels, -1, -1)
        latents = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return (latents * self.vae.config.scaling_factor).to(self.dtype)

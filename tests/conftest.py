"""Shared fixtures: tiny random models and data built in the test, never downloaded."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)

TINY_MODEL = {
    "unet": {
        "resolution": 16,
        "channels": 1,
        "block_out_channels": [8, 16],
        "cross_attention": [True, True],
        "layers_per_block": 1,
        "attention_heads": 2,
        "norm_num_groups": 4,
    },
    "text_encoder": {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32, "max_length": 12},
    "scheduler": {"num_train_timesteps": 100},
}

TINY_PROMPTS = [
    "frontal PA female 60s cardiomegaly",
    "frontal AP male 70s pleural effusion support devices",
    "lateral female 40s no finding",
    "frontal PA male 30s pneumothorax",
]


@pytest.fixture
def tiny_model():
    from mnemo.diffusion.model import DiffusionModel, ModelConfig

    model = DiffusionModel.from_config(ModelConfig.from_dict(TINY_MODEL), TINY_PROMPTS, seed=0)
    return model.eval()


@pytest.fixture
def tiny_images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (8, 1, 16, 16), generator=generator, dtype=torch.uint8)

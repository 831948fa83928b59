"""What determines a phantom data set's bytes: the config, and the seeded random streams.

Every purpose gets its own stream (`_rng(seed, ...tag)`), so adding a draw in one place never
shifts the random numbers used by another and so never changes unrelated output bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# RNG stream tags: see the module docstring.
_S_META, _S_ANATOMY, _S_STUDY, _S_RELABEL, _S_COPY, _S_PLANT = range(6)
_SPLIT_CODE = {"train": 0, "valid": 1}


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that determines the bytes of a phantom data set (worker count does not)."""

    seed: int = 0
    patients: int = 200
    valid_patients: int = 200
    studies_per_patient: tuple[int, int] = (1, 3)
    lateral_fraction: float = 0.25
    size: int = 256
    monochrome1_fraction: float = 0.1
    planted_studies: int = 8
    planted_copies: int = 24
    near_duplicate_noise: float = 0.0
    near_duplicate_shift: int = 0
    bits_stored: int = 12

    def __post_init__(self) -> None:
        spp = tuple(int(v) for v in self.studies_per_patient)
        object.__setattr__(self, "studies_per_patient", spp)
        if len(spp) != 2 or not 1 <= spp[0] <= spp[1]:
            raise ValueError(f"studies_per_patient must be (min, max) with 1 <= min <= max: {spp}")
        if self.patients < 1 or self.valid_patients < 0:
            raise ValueError("patients must be >= 1 and valid_patients >= 0")
        if not 0 <= self.planted_studies <= self.patients:
            raise ValueError("planted_studies must lie between 0 and patients")
        if self.planted_copies < 0:
            raise ValueError("planted_copies must be >= 0")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        if self.bits_stored not in (12, 16):
            raise ValueError(f"bits_stored must be 12 or 16, got {self.bits_stored}")
        for name in ("lateral_fraction", "monochrome1_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.near_duplicate_noise < 0 or self.near_duplicate_shift < 0:
            raise ValueError("near_duplicate_noise and near_duplicate_shift must be >= 0")

    @classmethod
    def from_value(cls, value: PhantomConfig | Mapping[str, Any] | None) -> PhantomConfig:
        """Accept a config, a plain mapping (e.g. from YAML) or None for the defaults."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"expected PhantomConfig or a mapping, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown phantom config key(s): {', '.join(map(repr, unknown))}")
        return cls(**dict(value))

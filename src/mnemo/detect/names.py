"""Detector (score column) names, built from `detect.wen_n`; import-light, as the config check
reads them when the workflow is parsed."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

WEN_STEPS = ("first", "all")  # Wen's magnitude at the first DDIM step / averaged over all steps
NEMO_DETECTORS = ("nemo_max_ssim", "nemo_mean_ssim")
_WEN = re.compile(r"^wen_(first|all)_n([0-9]+)$")


def wen_detector(n: int, steps: str = "first") -> str:
    """Wen's magnitude averaged over the first n generations, at the first or over all steps."""
    if steps not in WEN_STEPS:
        raise ValueError(f"steps: {steps!r} is not one of {WEN_STEPS}")
    return f"wen_{steps}_n{int(n)}"


def detector_names(wen_n: Iterable[int]) -> tuple[str, ...]:
    """Every detector detection writes for these n: Wen's first- then all-step magnitude per n,
    then NeMo's pairwise SSIM."""
    ns = list(wen_n)
    return (*(wen_detector(n, steps) for steps in WEN_STEPS for n in ns), *NEMO_DETECTORS)


def wen_n_of(columns: Iterable[str]) -> tuple[int, ...]:
    """The wen_n a scores table was written with, read from its column names (ascending)."""
    return tuple(sorted({int(m.group(2)) for c in columns if (m := _WEN.match(c))}))


def wen_reference_detector(wen_n: Sequence[int]) -> str:
    """The per-latent first-step magnitude whose median over the reference prompts sets Wen's
    mitigation target (`target_loss: auto`): the smallest n's first-step mean."""
    if not wen_n:
        raise ValueError("detect.wen_n is empty: no Wen magnitude to take the reference from")
    return wen_detector(min(wen_n), "first")

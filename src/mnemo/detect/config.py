"""Detection settings (config key `detect`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DetectConfig:
    guidance: float = 7.5
    steps: int = 25
    generations: int = 4
    nemo_samples: int = 10
    nemo_steps: int = 50
    nemo_timestep: int = 1
    nemo_tau: float | None = None
    kernel_size: int | str = "auto"
    betas: tuple[float, ...] = (0.33, 0.33, 0.33)
    batch_size: int = 64
    seed: int = 0
    token_significance: bool = True
    wen_n: tuple[int, ...] = field(default=(1, 4))

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.wen_n = tuple(self.wen_n)
        if max(self.wen_n) > self.generations:
            raise ValueError("config key 'detect.wen_n': every n must be <= detect.generations")

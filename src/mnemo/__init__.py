"""mnemo: find, localize and remove memorization in diffusion models."""

__version__ = "0.1.0"

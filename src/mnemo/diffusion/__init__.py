"""The diffusion models: a text-conditioned diffusers UNet with its tokenizer and text encoder,
the training loop (CFG dropout, Wen's training-time filter, resume) and seeded sampling."""

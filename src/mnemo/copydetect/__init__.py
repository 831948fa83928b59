"""Copy detection: image descriptors (SSCD TorchScript, in-house, pixel), their calibration,
embeddings on disk, nearest training neighbours and replication per sample and prompt."""

"""Memorization detection without training data (Wen's magnitude, NeMo's pairwise SSIM) and its
validation against measured replication (ROC AUC, TPR at low FPR)."""

"""Scalar metrics with their conventions in one place: ROC AUC and TPR at a fixed FPR (as in
Wen et al., sklearn-style ROC), Spearman correlation, median and MAD over prompts (as in NeMo)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _tensors(scores: Sequence[float] | torch.Tensor, labels: Sequence[bool] | torch.Tensor):
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().long()
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    return s, y


def _one_class(y: torch.Tensor) -> bool:
    """No positives or no negatives (or no labels at all): no ROC to compute."""
    return len(y) == 0 or bool(y.min() == y.max())


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve; nan when only one class (or nothing) is present."""
    from torchmetrics.functional.classification import binary_auroc

    s, y = _tensors(scores, labels)
    if _one_class(y):
        return math.nan
    return float(binary_auroc(s, y))


def roc_curve(scores, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fpr, tpr, thresholds), thresholds decreasing; empty when only one class is present."""
    from torchmetrics.functional.classification import binary_roc

    s, y = _tensors(scores, labels)
    if _one_class(y):
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty, empty
    fpr, tpr, thresholds = binary_roc(s, y, thresholds=None)
    return fpr, tpr, thresholds


def tpr_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """Highest true-positive rate whose false-positive rate is <= `fpr`; nan with one class."""
    s, y = _tensors(scores, labels)
    if _one_class(y):
        return math.nan
    rates, tprs, _ = roc_curve(s, y)
    allowed = rates <= fpr + 1e-12
    return float(tprs[allowed].max()) if allowed.any() else 0.0


def threshold_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """Smallest score threshold (predict positive when score >= it) with FPR <= `fpr`; nan without scores."""
    s, y = _tensors(scores, labels)
    if len(s) == 0:
        return math.nan
    negatives = torch.sort(s[y == 0], descending=True).values
    if len(negatives) == 0:
        return float(s.min())
    allowed_fp = math.floor(fpr * len(negatives) + 1e-9)
    if allowed_fp >= len(negatives):
        return float(negatives[-1])
    # threshold just above the (allowed_fp+1)-th highest negative
    return float(torch.nextafter(negatives[allowed_fp], torch.tensor(math.inf, dtype=torch.float64)))


def spearman(x, y) -> float:
    from torchmetrics.functional.regression import spearman_corrcoef

    a = torch.as_tensor(x, dtype=torch.float64).flatten()
    b = torch.as_tensor(y, dtype=torch.float64).flatten()
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(spearman_corrcoef(a, b))


def median_mad(values) -> tuple[float, float]:
    """Median and median absolute deviation (unscaled)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(v) == 0:
        return math.nan, math.nan
    median = v.quantile(0.5)
    return float(median), float((v - median).abs().quantile(0.5))

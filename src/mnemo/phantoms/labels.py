"""CheXpert-coded labels: sampling them for a study, and the rows of the CheXpert CSVs.

Real CheXpert labels are sparse (most observations blank), correlated (an enlarged heart comes
with edema and effusions) and partly uncertain (-1); the sampler reproduces those traits because
prompts, and so memorization of rare prompts, are built from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from mnemo.data.chexpert import OBSERVATIONS, UNCERTAINTY_POLICIES
from mnemo.data.prompts import prompt_text
from mnemo.phantoms.findings import FINDINGS

if TYPE_CHECKING:
    from mnemo.phantoms.plan import _Patient

# Rough CheXpert-like propensities of being picked as a positive finding.
_BASE_WEIGHT = {
    "Enlarged Cardiomediastinum": 0.06, "Cardiomegaly": 0.14, "Lung Opacity": 0.38,
    "Lung Lesion": 0.05, "Edema": 0.2, "Consolidation": 0.08, "Pneumonia": 0.05,
    "Atelectasis": 0.16, "Pneumothorax": 0.09, "Pleural Effusion": 0.3, "Pleural Other": 0.025,
    "Fracture": 0.045, "Support Devices": 0.35,
}
# Once a finding is present, these become more likely (co-occurrence structure of CheXpert).
_BOOST = {
    "Cardiomegaly": {"Enlarged Cardiomediastinum": 3.5, "Edema": 2.2, "Pleural Effusion": 1.8},
    "Enlarged Cardiomediastinum": {"Cardiomegaly": 3.5},
    "Edema": {"Pleural Effusion": 2.5, "Cardiomegaly": 2.0, "Support Devices": 1.6},
    "Pleural Effusion": {"Edema": 1.8, "Atelectasis": 2.0, "Support Devices": 1.4},
    "Pneumonia": {"Consolidation": 4.0, "Lung Opacity": 3.0},
    "Consolidation": {"Pneumonia": 3.5, "Lung Opacity": 2.0, "Atelectasis": 1.5},
    "Lung Opacity": {"Pneumonia": 2.0, "Atelectasis": 1.5},
    "Atelectasis": {"Pleural Effusion": 1.8, "Lung Opacity": 1.5},
    "Support Devices": {"Edema": 1.6, "Pleural Effusion": 1.5, "Pneumothorax": 1.5},
    "Pneumothorax": {"Support Devices": 2.0, "Fracture": 2.0},
    "Fracture": {"Pneumothorax": 2.5},
    "Lung Lesion": {"Pleural Effusion": 1.3},
}
# Strong pairs: once the key is present the partner is added outright with this chance.
_COMPANION = {
    "Cardiomegaly": (("Enlarged Cardiomediastinum", 0.25), ("Pleural Effusion", 0.2)),
    "Pneumonia": (("Consolidation", 0.3), ("Lung Opacity", 0.35)),
    "Edema": (("Pleural Effusion", 0.3), ("Cardiomegaly", 0.15)),
    "Fracture": (("Pneumothorax", 0.15),),
}
_P_UNCERTAIN = {  # chance that a non-positive observation is reported as uncertain
    "Atelectasis": 0.1, "Consolidation": 0.08, "Pneumonia": 0.07, "Edema": 0.05,
    "Enlarged Cardiomediastinum": 0.05, "Cardiomegaly": 0.03, "Pleural Effusion": 0.04,
    "Lung Opacity": 0.02,
}
_P_NEGATIVE = {  # chance of an explicit negative ("no pneumothorax")
    "Pneumothorax": 0.35, "Pleural Effusion": 0.3, "Edema": 0.2, "Consolidation": 0.2,
    "Pneumonia": 0.1, "Cardiomegaly": 0.1, "Enlarged Cardiomediastinum": 0.08,
    "Lung Opacity": 0.05, "Support Devices": 0.05, "Fracture": 0.05, "Lung Lesion": 0.04,
    "Atelectasis": 0.04, "Pleural Other": 0.02,
}
_AGE_LINKED = ("Cardiomegaly", "Pleural Effusion", "Edema", "Enlarged Cardiomediastinum")


def sample_labels(rng: np.random.Generator, ap_pa: str, age: int) -> dict[str, float]:
    """CheXpert-coded labels of one study: sparse, correlated, some uncertain, many blank."""
    labels = {o: math.nan for o in OBSERVATIONS}
    ap = ap_pa == "AP"
    if rng.random() < (0.14 if ap else 0.32):
        labels["No Finding"] = 1.0
        for o in FINDINGS:
            if rng.random() < 0.5 * _P_NEGATIVE.get(o, 0.0):
                labels[o] = 0.0
        return labels
    weights = dict(_BASE_WEIGHT)
    weights["Support Devices"] *= 2.5 if ap else 0.35
    for o in _AGE_LINKED:
        weights[o] *= 0.6 + age / 90.0
    n_pos = int(rng.choice([1, 2, 3, 4], p=[0.36, 0.3, 0.2, 0.14]))
    chosen: list[str] = []
    for _ in range(n_pos):
        names = [o for o in FINDINGS if o not in chosen]
        w = np.array([weights[o] for o in names])
        pick = names[int(rng.choice(len(names), p=w / w.sum()))]
        chosen.append(pick)
        for o, f in _BOOST.get(pick, {}).items():
            weights[o] *= f
    for o in list(chosen):
        for partner, p in _COMPANION.get(o, ()):
            if len(chosen) < 4 and partner not in chosen and rng.random() < p:
                chosen.append(partner)
    for k, o in enumerate(chosen):  # the first one stays positive
        labels[o] = -1.0 if k > 0 and rng.random() < 0.15 else 1.0
    for o in FINDINGS:
        if o in chosen:
            continue
        u = rng.random()
        if u < _P_UNCERTAIN.get(o, 0.01):
            labels[o] = -1.0
        elif u < _P_UNCERTAIN.get(o, 0.01) + _P_NEGATIVE.get(o, 0.0):
            labels[o] = 0.0
    return labels


_RARE = ("Lung Lesion", "Pleural Other", "Fracture", "Pneumothorax",
         "Enlarged Cardiomediastinum", "Pneumonia")


def _planted_labels(rng: np.random.Generator) -> dict[str, float]:
    """2-4 certain positives including a rare one: a combination seldom seen by chance."""
    labels = {o: math.nan for o in OBSERVATIONS}
    first = _RARE[int(rng.integers(len(_RARE)))]
    others = [o for o in FINDINGS if o != first]
    n = int(rng.integers(2, 5))
    picks = [first] + [others[i] for i in rng.choice(len(others), size=n - 1, replace=False)]
    for o in FINDINGS:
        labels[o] = 1.0 if o in picks else (0.0 if rng.random() < 0.25 else math.nan)
    return labels


def _prompts(view: str, ap_pa: str | None, sex: str, age: int,
             labels: Mapping[str, float]) -> set[str]:
    return {prompt_text(view, ap_pa, sex, age, labels, p) for p in UNCERTAINTY_POLICIES}


# --------------------------------------------------------------------------------------------
# CSV rows
# --------------------------------------------------------------------------------------------


def _fmt_label(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.1f}"


def _csv_rows(root_name: str, patients: list[_Patient]) -> list[list[str]]:
    """One CheXpert row per image; paths start with the data set folder's name, as CheXpert's."""
    rows = []
    for p in patients:
        for st in p.studies:
            for im in st.images:
                rel = f"{root_name}/{p.split}/patient{p.number:05d}/study{st.number}/{im.file}"
                rows.append([rel, p.sex, str(st.age), im.view,
                             st.ap_pa if im.view == "Frontal" else ""]
                            + [_fmt_label(st.labels.get(o, math.nan)) for o in OBSERVATIONS])
    return rows

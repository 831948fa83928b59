"""The CheXpert label schema: columns, value coding and uncertainty policies.

One place that knows what a CheXpert CSV looks like, shared by the phantom writer, the dataset
cache and the prompt builder so that all three agree on names and codes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
CSV_COLUMNS: tuple[str, ...] = DEMOGRAPHIC_COLUMNS + OBSERVATIONS

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
ALLOWED_VALUES = (POSITIVE, NEGATIVE, UNCERTAIN)

# The three policies of Irvin et al. (2019): uncertain as positive, as negative, or left out.
UNCERTAINTY_POLICIES = ("ones", "zeros", "ignore")


def column_name(observation: str) -> str:
    """snake_case column name used in Parquet and SQL (e.g. 'pleural_effusion')."""
    return observation.lower().replace(" ", "_")


LABEL_COLUMNS: tuple[str, ...] = tuple(column_name(o) for o in OBSERVATIONS)


def parse_label(raw: str | float | None) -> float:
    """CSV cell -> 1.0 / 0.0 / -1.0 / nan (blank = not mentioned). Raises ValueError otherwise."""
    if raw is None:
        return math.nan
    if isinstance(raw, str):
        text = raw.strip()
        if text == "":
            return math.nan
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"label value {raw!r} is not one of 1, 0, -1 or blank") from None
    else:
        value = float(raw)
    if math.isnan(value):
        return math.nan
    if value not in ALLOWED_VALUES:
        raise ValueError(f"label value {raw!r} is not one of 1, 0, -1 or blank")
    return value


def apply_uncertainty(value: float, policy: str) -> float:
    """Map one coded label to the training target under a policy (nan = no target)."""
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(f"unknown uncertainty policy {policy!r}; expected one of {UNCERTAINTY_POLICIES}")
    if value == UNCERTAIN:
        return {"ones": POSITIVE, "zeros": NEGATIVE, "ignore": math.nan}[policy]
    return value



def positive_observations(labels: Mapping[str, float], policy: str) -> list[str]:
    """Observations that count as present under the policy, in CheXpert order."""
    return [o for o in OBSERVATIONS if apply_uncertainty(labels.get(o, math.nan), policy) == POSITIVE]


def csv_header(csv_path: str | Path) -> list[str]:
    """The column names of a CSV, read from its first line only, as the dataset reader reads them."""
    with Path(csv_path).open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        line = handle.readline()
    delimiter = max(",;\t", key=line.count)
    return [name.strip() for name in next(csv.reader([line], delimiter=delimiter), [])]

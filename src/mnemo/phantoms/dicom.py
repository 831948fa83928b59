"""DICOM files of the phantoms and the fake identifiers in their headers.

The headers carry names, IDs, birth dates and UIDs shaped like real ones, so that the workflow's
de-identification step has something to remove; all of them are made up. pydicom is imported
inside the functions that need it, so that rendering alone does not pay for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnemo.phantoms.config import _rng


@dataclass(frozen=True)
class StudyMeta:
    """DICOM header content of one image; identifiers are fake but shaped like real ones."""

    patient_name: str
    patient_id: str
    patient_sex: str
    birth_date: str
    age: int
    study_date: str
    study_time: str
    study_uid: str
    series_uid: str
    sop_uid: str
    view_position: str
    accession_number: str = ""
    study_id: str = "1"
    series_number: int = 1
    instance_number: int = 1
    institution_name: str = "Phantom General Hospital"
    referring_physician: str = "Phantom^Referrer"
    bits_stored: int = 12

    @classmethod
    def from_value(cls, value: StudyMeta | Mapping[str, Any]) -> StudyMeta:
        if isinstance(value, cls):
            return value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown StudyMeta key(s): {', '.join(map(repr, unknown))}")
        try:
            return cls(**dict(value))
        except TypeError as exc:
            raise ValueError(f"incomplete StudyMeta: {exc}") from None


def quantize(attenuation: np.ndarray, bits_stored: int = 12) -> np.ndarray:
    """Attenuation in [0, 1] -> MONOCHROME2 stored values (uint16, 0 .. 2**bits_stored - 1)."""
    maxval = (1 << int(bits_stored)) - 1
    a = np.clip(np.asarray(attenuation, dtype=np.float64), 0.0, 1.0)
    return np.rint(a * maxval).astype(np.uint16)


def write_dicom(path: str | Path, attenuation: np.ndarray, meta: StudyMeta | Mapping[str, Any],
                monochrome1: bool = False) -> Path:
    """Write a DX 'for presentation' file; MONOCHROME1 files store inverted values.

    Identifiers come from meta and are fake by construction; pydicom is imported here so that
    rendering alone does not pay for it.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
    )

    m = StudyMeta.from_value(meta)
    if m.bits_stored not in (12, 16):
        raise ValueError(f"bits_stored must be 12 or 16, got {m.bits_stored}")
    att = np.asarray(attenuation)
    if att.ndim != 2:
        raise ValueError(f"attenuation must be a 2-D array, got shape {att.shape}")
    maxval = (1 << m.bits_stored) - 1
    stored = quantize(att, m.bits_stored)
    if monochrome1:
        stored = (maxval - stored).astype(np.uint16)

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    fm.MediaStorageSOPInstanceUID = m.sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "MNEMO_PHANTOM"

    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = m.sop_uid
    ds.StudyDate = m.study_date
    ds.SeriesDate = m.study_date
    ds.ContentDate = m.study_date
    ds.StudyTime = m.study_time
    ds.SeriesTime = m.study_time
    ds.ContentTime = m.study_time
    ds.AccessionNumber = m.accession_number
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "mnemo phantom"
    ds.InstitutionName = m.institution_name
    ds.ReferringPhysicianName = m.referring_physician
    ds.StudyDescription = "CHEST"
    ds.SeriesDescription = f"CHEST {m.view_position}"
    ds.PatientName = m.patient_name
    ds.PatientID = m.patient_id
    ds.PatientBirthDate = m.birth_date
    ds.PatientSex = {"male": "M", "female": "F", "m": "M", "f": "F"}.get(
        str(m.patient_sex).strip().lower(), "O")
    ds.PatientAge = f"{int(m.age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = m.view_position
    ds.StudyInstanceUID = m.study_uid
    ds.SeriesInstanceUID = m.series_uid
    ds.StudyID = m.study_id
    ds.SeriesNumber = m.series_number
    ds.InstanceNumber = m.instance_number
    ds.PatientOrientation = ["P", "F"] if m.view_position == "LL" else ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(att.shape[0]), int(att.shape[1])
    spacing = f"{430.0 / att.shape[1]:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = m.bits_stored
    ds.HighBit = m.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    lo, hi = np.percentile(stored[::4, ::4], [1.0, 99.0])  # a subsample is plenty
    ds.WindowCenter = f"{(lo + hi) / 2.0:.1f}"
    ds.WindowWidth = f"{max(hi - lo, 1.0) + 1.0:.1f}"
    ds.PixelData = stored.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def read_attenuation(path: str | Path) -> np.ndarray:
    """Inverse of write_dicom: float32 in [0, 1], bright = dense whatever the photometry."""
    import pydicom

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float64)
    arr = arr * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    maxval = float((1 << int(ds.BitsStored)) - 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = maxval - arr
    return (arr / maxval).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Fake identifiers
# --------------------------------------------------------------------------------------------

_FIRST_NAMES = {
    "Female": ("Alice", "Beth", "Clara", "Dora", "Edith", "Fay", "Greta", "Hilda", "Iris",
               "June", "Kate", "Lena", "Mira", "Nora", "Olga", "Pia", "Rosa", "Sara", "Tess",
               "Vera"),
    "Male": ("Adam", "Boris", "Carl", "Dan", "Emil", "Felix", "Gus", "Hugo", "Ivan", "Jack",
             "Karl", "Leo", "Max", "Nils", "Otto", "Paul", "Rolf", "Sam", "Tom", "Walt"),
}


def _fake_name(r: np.random.Generator, sex: str) -> str:
    return f"Phantom^{_FIRST_NAMES[sex][int(r.integers(20))]}{int(r.integers(1, 100))}"


def _fake_patient_ids(seed: int, n: int) -> list[str]:
    """n distinct six-digit patient IDs."""
    ids = _rng(seed, 99).choice(900_000, size=n, replace=False) + 100_000
    return [f"PH-{int(i):06d}" for i in ids]


def _uid(seed: int, *parts: object) -> str:
    """A UID derived from the seed and parts (not from time or a counter): same seed, same bytes."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["mnemo-phantom", str(seed), *map(str, parts)]))

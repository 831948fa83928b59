"""Synthetic CheXpert-like chest radiograph studies ("phantoms") written as DICOM, so that the
offline demo has a data set with known, planted duplicates to provoke and score memorization."""

from mnemo.phantoms.anatomy import PatientAnatomy, sample_anatomy
from mnemo.phantoms.config import PhantomConfig
from mnemo.phantoms.dataset import PhantomSummary, generate_phantom_dataset
from mnemo.phantoms.dicom import StudyMeta, quantize, read_attenuation, write_dicom
from mnemo.phantoms.findings import FINDINGS, UNCERTAIN_SEVERITY
from mnemo.phantoms.labels import sample_labels
from mnemo.phantoms.preview import findings_grid, preview_grid
from mnemo.phantoms.raster import gaussian_blur
from mnemo.phantoms.render import render_study

__all__ = [
    "FINDINGS",
    "UNCERTAIN_SEVERITY",
    "PatientAnatomy",
    "PhantomConfig",
    "PhantomSummary",
    "StudyMeta",
    "findings_grid",
    "gaussian_blur",
    "generate_phantom_dataset",
    "preview_grid",
    "quantize",
    "read_attenuation",
    "render_study",
    "sample_anatomy",
    "sample_labels",
    "write_dicom",
]

"""Small radiograph files and CheXpert CSVs made by the tests: DICOMs of any photometric
interpretation, transfer syntax or frame count, PNGs with or without sBIT, and the CSV rows that
list them. Nothing is downloaded."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from mnemo.data import chexpert


def ramp(rows: int = 32, columns: int = 32, bits: int = 12) -> np.ndarray:
    """A diagonal ramp with some texture spanning most of the `bits` range (uint16)."""
    rng = np.random.default_rng(0)
    top = (1 << bits) - 1
    values = np.add.outer(np.arange(rows), np.arange(columns)) / (rows + columns - 2) * top * 0.9
    return np.clip(values + rng.integers(0, top // 50 + 1, (rows, columns)), 0, top).astype(np.uint16)


def dicom(path: Path, pixels: np.ndarray | None = None, *, bits: int = 12, photometric: str = "MONOCHROME2",
          transfer_syntax: str | None = None, frame_bytes: bytes | None = None, preamble: bool = True,
          palette: np.ndarray | None = None, patient: str = "Doe^Jane") -> Path:
    """Write a secondary-capture DICOM. `pixels`: (H, W) grey or palette indices, (H, W, 3) colour,
    (F, H, W) frames. `frame_bytes`: an already compressed frame (encapsulated as is). Without
    `preamble` the bare data set is written (no 128-byte preamble, no 'DICM', no file meta)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = ramp() if pixels is None else np.asarray(pixels)
    colour = photometric in ("RGB", "YBR_FULL")
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    rows, columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient, "ID-" + patient, "19500101"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    allocated = 8 if bits <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if palette is not None:  # (N, 3) uint16 entries, 16-bit LUT
        descriptor = [len(palette), 0, 16]
        for channel, name in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{name}PaletteColorLookupTableDescriptor", descriptor)
            setattr(ds, f"{name}PaletteColorLookupTableData", palette[:, channel].astype("<u2").tobytes())
    if frame_bytes is not None:
        ds.PixelData = encapsulate([frame_bytes])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype(np.uint8 if allocated == 8 else "<u2").tobytes()
        ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        buffer = io.BytesIO()
        ds.save_as(buffer, implicit_vr=True, little_endian=True)
        path.write_bytes(buffer.getvalue())
    return path


def png(path: Path, pixels: np.ndarray, significant_bits: int | None = None) -> Path:
    """Grey PNG (8-bit for uint8, 16-bit otherwise), with an sBIT chunk when asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if significant_bits is not None:
        info.add(b"sBIT", bytes([significant_bits]))
    image = Image.fromarray(pixels) if pixels.dtype == np.uint8 else Image.fromarray(pixels.astype(np.uint16))
    image.save(path, format="PNG", pnginfo=info)
    return path


def chexpert_csv(path: Path, image_paths: Sequence[str], *, bom: bool = False, crlf: bool = False,
                 delimiter: str = ",", texts: Sequence[str] | None = None) -> Path:
    """A CheXpert train.csv listing `image_paths` (frontal PA, one positive finding each), with a
    free-text `Report` column where `texts` are given."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n")
    writer.writerow([*chexpert.CSV_COLUMNS, *(["Report"] if texts is not None else [])])
    for k, image in enumerate(image_paths):
        labels = ["1.0" if i == k % len(chexpert.OBSERVATIONS) else "" for i in range(len(chexpert.OBSERVATIONS))]
        writer.writerow([image, "Female", str(40 + k), "Frontal", "PA", *labels, *([texts[k]] if texts is not None else [])])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode())
    return path

"""One radiograph file (DICOM, JPEG, PNG) -> grey values in [0, 1], bright = dense.

Files are recognised by their content, never their extension: hospital exports name DICOMs
`.jpg`, omit the 128-byte preamble, or use any transfer syntax pydicom can decode with its
plugins (pylibjpeg, pyjpegls). Colour is reduced to luminance the way Pillow converts RGB JPEGs,
so a secondary capture and its JPEG export give the same grey image. Every failure is a
`BadImageError` with a one-line reason; decoder chatter (pydicom's log records and warnings) is
kept out of the job log, which gets one line per file from the caller instead.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnemo.data.privacy import IdentifyingError

MULTIFRAME_CHOICES = ("reject", "first", "middle")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# ITU-R 601-2 luma, the weights of Pillow's RGB -> L conversion used for JPEG/PNG.
LUMA = np.array([0.299, 0.587, 0.114])
_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
        b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
        b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV"}


class BadImageError(IdentifyingError):
    """An image file that cannot be read; carries the file so the message can name it."""

    def __init__(self, path: str | Path, reason: str, public: str | None = None):
        reason = " ".join(reason.split())  # decoders' multi-line messages: one line per file
        super().__init__(f"{path}: {reason}", public)
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Radiograph:
    """Decoded pixels (float32 (H, W) in [0, 1]) and the format the content was recognised as."""

    pixels: np.ndarray
    source_format: str


@contextlib.contextmanager
def quiet_decoders() -> Iterator[None]:
    """Keep pydicom's log records (tracebacks included) and warnings out of the job log.

    Its loggers are children of 'pydicom'; stopping propagation there silences all of them, and
    the reason of a failed read reaches the caller in the exception instead.
    """
    logger = logging.getLogger("pydicom")
    propagate, handlers = logger.propagate, logger.handlers[:]
    logger.propagate, logger.handlers = False, [logging.NullHandler()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.propagate, logger.handlers = propagate, handlers


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set written without preamble and 'DICM': it opens with a group 0002 or 0008
    element in little-endian order, with either an explicit VR or a plausible implicit length."""
    if len(head) < 8:
        return False
    group, _element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008):
        return False
    if head[4:6] in _VRS:
        return True
    (length,) = struct.unpack("<I", head[4:8])
    return 0 < length < 1 << 16


def sniff_format(path: Path) -> str:
    """'dicom', 'dicom-bare' (no preamble), or the image format Pillow recognises ('jpeg', 'png', ...)."""
    with path.open("rb") as handle:
        head = handle.read(132)
    if len(head) == 132 and head[128:] == b"DICM":
        return "dicom"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return str(image.format).lower()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    if _looks_like_bare_dicom(head):
        return "dicom-bare"
    raise BadImageError(path, "not a DICOM, JPEG or PNG file (content not recognised)")


def read_radiograph(path: str | Path, multiframe: str = "reject") -> Radiograph:
    """Any supported file -> `Radiograph`; raises `BadImageError` with the reason."""
    path = Path(path)
    if multiframe not in MULTIFRAME_CHOICES:
        raise ValueError(f"dataset.multiframe={multiframe!r}; expected one of {MULTIFRAME_CHOICES}")
    if not path.is_file():
        raise BadImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise BadImageError(path, "file is empty")
    with quiet_decoders():
        kind = sniff_format(path)
        if kind.startswith("dicom"):
            return Radiograph(_read_dicom(path, multiframe, bare=kind == "dicom-bare"), "dicom")
        return Radiograph(_read_bitmap(path), kind)


def load_image(path: str | Path, multiframe: str = "reject") -> np.ndarray:
    """Any supported file -> float32 (H, W) in [0, 1], bright = dense (MONOCHROME2)."""
    return read_radiograph(path, multiframe).pixels


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------

def _open_dicom(path: Path, bare: bool):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(path, force=bare)
    except Exception as error:  # pydicom raises many types for broken files
        raise BadImageError(path, f"unreadable DICOM ({type(error).__name__}: {error})") from None
    if bare and "TransferSyntaxUID" not in ds.file_meta:  # a bare data set is uncompressed
        implicit = ds.original_encoding[0] if ds.original_encoding else True
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _read_dicom(path: Path, multiframe: str, bare: bool = False) -> np.ndarray:
    from pydicom.pixels import pixel_array

    ds = _open_dicom(path, bare)
    try:
        if "PixelData" not in ds:
            raise BadImageError(path, "DICOM has no pixel data")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        index = None
        if frames > 1:
            if multiframe == "reject":
                raise BadImageError(path, f"multi-frame DICOM ({frames} frames); set dataset.multiframe "
                                          "to first or middle to cache one frame of each such file")
            index = 0 if multiframe == "first" else frames // 2
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        try:
            raw = pixel_array(ds, index=index, as_rgb=True)
        except Exception as error:
            raise BadImageError(path, f"DICOM pixel data cannot be decoded ({type(error).__name__}: {error})") from None
        if photometric == "PALETTE COLOR":
            return _palette_to_unit(path, raw, ds)
        if photometric.startswith(("RGB", "YBR")):
            if raw.ndim != 3 or raw.shape[-1] != 3:
                raise BadImageError(path, f"{photometric} DICOM decoded to shape {raw.shape}, not (rows, columns, 3)")
            return _luminance(raw, (1 << int(ds.BitsStored)) - 1)
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise BadImageError(path, f"unsupported PhotometricInterpretation {photometric}")
        if raw.ndim != 2:
            raise BadImageError(path, f"expected one grey frame, got pixel array of shape {raw.shape}")
        return _grey_to_unit(path, raw, ds, photometric == "MONOCHROME1")
    except BadImageError:
        raise
    except Exception as error:  # a malformed attribute (LUT, window) surfaces here
        raise BadImageError(path, f"DICOM cannot be rendered ({type(error).__name__}: {error})") from None


def _grey_to_unit(path: Path, raw: np.ndarray, ds, inverted: bool) -> np.ndarray:
    """Modality LUT/rescale, then the VOI LUT or window (else a robust range), MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(raw, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        windowed = apply_voi_lut(values, ds, prefer_lut=True)
        low, high = apply_voi_lut(np.array([-1e12, 1e12]), ds, prefer_lut=True)
    else:  # no VOI: robust range of this image
        windowed = values
        low, high = np.percentile(values, [0.5, 99.5])
    if not high > low:
        raise BadImageError(path, "image has no contrast (empty window)")
    unit = np.clip((windowed - low) / (high - low), 0.0, 1.0)
    if inverted:
        unit = 1.0 - unit
    return unit.astype(np.float32)


def _palette_to_unit(path: Path, raw: np.ndarray, ds) -> np.ndarray:
    """Indices -> RGB through the palette LUT -> luminance, scaled by the LUT entries' bit depth."""
    from pydicom.pixels import apply_color_lut

    if raw.ndim != 2:
        raise BadImageError(path, f"expected one PALETTE COLOR frame, got pixel array of shape {raw.shape}")
    rgb = apply_color_lut(raw, ds)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    return _luminance(rgb, (1 << bits) - 1)


def _luminance(rgb: np.ndarray, full_scale: int) -> np.ndarray:
    return np.clip(rgb.astype(np.float64) @ LUMA / full_scale, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# JPEG / PNG
# ---------------------------------------------------------------------------------------------

def png_significant_bits(path: Path) -> int | None:
    """The grey channel's significant bits from a PNG's sBIT chunk, None when it has none."""
    with path.open("rb") as handle:
        if handle.read(8) != PNG_SIGNATURE:
            return None
        while True:
            head = handle.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"sBIT":
                data = handle.read(length)
                return data[0] if data else None
            if kind in (b"IDAT", b"IEND"):
                return None
            handle.seek(length + 4, 1)


def _read_bitmap(path: Path) -> np.ndarray:
    """Grey or colour bitmap -> luminance in [0, 1], scaled by the bit depth the file declares.

    The divisor is 2^bits - 1 with bits from PNG's sBIT chunk when present, else the mode's depth
    (16 for 16-bit grey PNG, 8 otherwise), as DICOM's BitsStored is used; never the image's own
    maximum. A file with sBIT whose samples exceed 2^sBIT - 1 stores them scaled up to the full
    depth, as the PNG specification describes, and is divided by the full range instead.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            sixteen = image.mode.startswith("I") and (image.mode != "I" or image.format == "PNG")
            if image.mode == "I" and not sixteen:
                raise BadImageError(path, "32-bit integer images are not supported; use 8- or 16-bit")
            grey = image.convert("I;16") if sixteen else image.convert("L")
            array = np.asarray(grey, dtype=np.float64)
            grey_png = image.format == "PNG" and image.mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L")
    except UnidentifiedImageError:
        raise BadImageError(path, "not a readable JPEG/PNG image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(path, f"image cannot be decoded ({type(error).__name__}: {error})") from None
    depth = 16 if sixteen else 8
    significant = png_significant_bits(path) if grey_png else None
    bits = depth
    if significant is not None and 1 <= significant < depth and array.max(initial=0) <= (1 << significant) - 1:
        bits = significant
    return (array / ((1 << bits) - 1)).astype(np.float32)

"""Image codecs and layouts shared by every stage: PNG bytes in Parquet, uint8 tensors in memory."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, C) / (C, H, W) with C in {1, 3} -> lossless PNG bytes."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (C, H, W)."""
    array = np.asarray(Image.open(io.BytesIO(data)))
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def decode_pngs(blobs: Sequence[bytes]) -> torch.Tensor:
    """Many PNGs of one shape -> uint8 tensor (N, C, H, W)."""
    if len(blobs) == 0:
        return torch.empty((0, 1, 0, 0), dtype=torch.uint8)
    return torch.from_numpy(np.stack([decode_png(b) for b in blobs]))


def encode_pngs(images: torch.Tensor) -> list[bytes]:
    """uint8 tensor (N, C, H, W) -> PNG bytes per image."""
    array = images.detach().cpu().numpy()
    return [encode_png(a) for a in array]


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Grey (N,1,H,W) -> (N,3,H,W); RGB passes through."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def contact_sheet(
    rows: Sequence[Sequence[torch.Tensor | np.ndarray]],
    row_titles: Sequence[str] | None = None,
    cell: int = 64,
    title_width: int = 0,
    cell_captions: Sequence[Sequence[str]] | None = None,
) -> Image.Image:
    """Grid of images (each uint8 (C,H,W)), upscaled with nearest to `cell` px, optional captions."""
    ncols = max((len(r) for r in rows), default=1)
    caption_h = 12 if cell_captions else 0
    sheet = Image.new("RGB", (title_width + ncols * (cell + 2), len(rows) * (cell + 2 + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        y = r * (cell + 2 + caption_h)
        if row_titles and title_width:
            draw.text((4, y + cell // 2 - 6), str(row_titles[r])[: title_width // 6], fill="black")
        for c, image in enumerate(row):
            array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            array = np.moveaxis(array, 0, -1)
            if array.shape[-1] == 1:
                array = np.repeat(array, 3, axis=-1)
            tile = Image.fromarray(array.astype(np.uint8)).resize((cell, cell), Image.NEAREST)
            x = title_width + c * (cell + 2)
            sheet.paste(tile, (x, y))
            if cell_captions and r < len(cell_captions) and c < len(cell_captions[r]):
                draw.text((x + 2, y + cell), cell_captions[r][c], fill="black")
    return sheet

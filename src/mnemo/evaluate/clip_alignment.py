"""A_CLIP, NeMo's image-text alignment: the cosine similarity between a sample's CLIP image
embedding and its prompt's CLIP text embedding, with a local CLIP model folder (transformers
`CLIPModel` format, e.g. openai/clip-vit-large-patch14 downloaded by the user). A mitigation that
removes memorization should keep it: samples still showing what their prompt says."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch


class ClipAlignment:
    """CLIPModel + its processor from one local folder; `scores(images, texts)` per pair."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(str(folder)).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(folder))

    @torch.no_grad()
    def scores(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[float]:
        """Cosine similarity of each image (uint8 H x W x C, grey or RGB) with its text."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if not images:
            return []
        rgb = [np.repeat(i, 3, axis=-1) if i.shape[-1] == 1 else i for i in images]
        inputs = self.processor(text=list(texts), images=rgb, return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        image = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        text = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        image, text = (getattr(x, "pooler_output", x) for x in (image, text))  # transformers 5 may wrap them
        return torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1).tolist()


def clip_alignment_table(samples: pa.Table, prompts: pa.Table, scorer: ClipAlignment,
                         batch_size: int = 32) -> pa.Table:
    """One row per sample: sample_id, prompt_id, guidance, a_clip (against the sample's prompt)."""
    from mnemo.data.images import decode_png

    text_of = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt").to_pylist(), strict=True))
    rows = samples.select(["sample_id", "prompt_id", "guidance", "image"]).to_pylist()
    out = []
    for begin in range(0, len(rows), batch_size):
        batch = rows[begin:begin + batch_size]
        images = [np.moveaxis(decode_png(r["image"]), 0, -1) for r in batch]
        for row, score in zip(batch, scorer.scores(images, [text_of[r["prompt_id"]] for r in batch]), strict=True):
            out.append({"sample_id": row["sample_id"], "prompt_id": row["prompt_id"], "guidance": row["guidance"],
                        "a_clip": float(score)})
    schema = pa.schema([("sample_id", pa.string()), ("prompt_id", pa.string()), ("guidance", pa.float64()),
                        ("a_clip", pa.float64())])
    return pa.Table.from_pylist(out, schema=schema)

"""The detection stage: every detector over a prompt table, batched, on the same per-sample
seeds as generation (`diffusion.sample.sample_seed`), so scores and replication share noise.
"""

from __future__ import annotations

import torch

from mnemo.detect.config import DetectConfig
from mnemo.detect.nemo import nemo_detection
from mnemo.detect.wen import summarize_wen, token_significance, wen_magnitudes
from mnemo.diffusion.model import DiffusionModel
from mnemo.nemo.signal import memorization_threshold


def detect_prompts(model: DiffusionModel, prompts, config: DetectConfig, progress: bool = True) -> dict:
    """Run every detector over a prompt table (prompt_id, prompt, group, memorized_truth, reference).

    Returns Arrow tables: per-prompt `scores`, NeMo `pairwise` values (the rows tau is computed
    from) and token `significance`, plus the threshold record.
    """
    import pyarrow as pa

    ids = prompts.column("prompt_id").to_pylist()
    texts = prompts.column("prompt").to_pylist()
    reference = torch.tensor(prompts.column("reference").to_pylist(), dtype=torch.bool)

    magnitudes = wen_magnitudes(model, ids, texts, config, progress)
    wen = summarize_wen(magnitudes, config.wen_n)
    nemo = nemo_detection(model, ids, texts, config)
    computed = memorization_threshold(nemo.pairwise[reference]) if reference.any() else None
    if config.nemo_tau is None and computed is None:
        raise ValueError("the prompt set has no reference (non-memorized) prompts to calibrate tau on; "
                         "give them, or pin config key 'detect.nemo_tau' (0.428 for SD v1.4)")
    tau = computed if config.nemo_tau is None else float(config.nemo_tau)
    above = (nemo.sample_max > tau).sum(dim=1)

    scores = {
        "prompt_id": ids,
        "prompt": texts,
        "group": prompts.column("group").to_pylist(),
        "memorized_truth": prompts.column("memorized_truth").to_pylist(),
        "reference": reference.tolist(),
        **{name: values.tolist() for name, values in wen.items()},
        "nemo_max_ssim": nemo.pairwise.max(dim=1).values.tolist(),
        "nemo_mean_ssim": nemo.pairwise.mean(dim=1).tolist(),
        "nemo_samples_above_tau": above.tolist(),
        "nemo_flagged": (above > 0).tolist(),
        "nemo_tau": [tau] * len(ids),
    }
    n_pairs = nemo.pairwise.shape[1]
    pairwise = pa.table({
        "prompt_id": [pid for pid in ids for _ in range(n_pairs)],
        "pair": list(range(n_pairs)) * len(ids),
        "ms_ssim": nemo.pairwise.flatten().tolist(),
        "reference": [r for r in reference.tolist() for _ in range(n_pairs)],
    })
    rows = []
    if config.token_significance:
        for pid, tokens in zip(ids, token_significance(model, ids, texts, config), strict=True):
            rows += [{"prompt_id": pid, "position": i, "token": t, "significance": v}
                     for i, (t, v) in enumerate(tokens)]
    significance = pa.Table.from_pylist(rows, schema=pa.schema([
        pa.field("prompt_id", pa.string()), pa.field("position", pa.int32()),
        pa.field("token", pa.string()), pa.field("significance", pa.float32()),
    ]))
    threshold = {
        "tau": tau,
        "computed_tau": computed,
        "pinned": config.nemo_tau is not None,
        "reference_prompts": int(reference.sum()),
        "reference_pairs": int(reference.sum()) * n_pairs,
        "kernel_size": nemo.kernel_size,
        "betas": list(config.betas),
        "samples": config.nemo_samples,
    }
    return {"scores": pa.table(scores), "pairwise": pairwise, "significance": significance,
            "threshold": threshold, "magnitudes": magnitudes}


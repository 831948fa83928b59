"""Multi-process training through torchrun: two CPU processes on the gloo backend train a tiny
model on shards of the same batches; both step, and their weights end bit-identical."""

from __future__ import annotations

import re
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mnemo.data.images import encode_pngs
from mnemo.diffusion.distributed import launch
from mnemo.diffusion.training_job import TrainingJob
from tests.conftest import TINY_MODEL, TINY_PROMPTS


def write_tiny_cache(folder, images: torch.Tensor, prompts: list[str]):
    """A cache folder as cache_dataset writes it (the columns training reads)."""
    folder.mkdir(parents=True)
    rows = {"prompt": [prompts[i % len(prompts)] for i in range(len(images))],
            "content_hash": [f"h{i}" for i in range(len(images))], "image": encode_pngs(images)}
    pq.write_table(pa.table(rows), folder / "part-00000.parquet")
    return folder


def test_two_gloo_processes_step_and_keep_equal_weights(tmp_path, tiny_images):
    job = TrainingJob(
        cache=str(write_tiny_cache(tmp_path / "cache", tiny_images, TINY_PROMPTS)),
        model_dir=str(tmp_path / "pipeline"), history=str(tmp_path / "log.csv"),
        summary=str(tmp_path / "summary.json"), checkpoint_dir=str(tmp_path / "checkpoints"),
        model=TINY_MODEL, device="cpu", threads=1,
        train={"steps": 3, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 3, "log_every": 1,
               "filter": {"warmup_steps": 1, "percentile": 90}},
    )
    output = tmp_path / "torchrun.log"
    with output.open("w") as handle:
        try:
            launch(job, 2, tmp_path / "job.json", stdout=handle, timeout=120)
        except subprocess.CalledProcessError as error:
            raise AssertionError(output.read_text()[-4000:]) from error
    ranks = dict(re.findall(r"rank (\d): 3 steps, weights ([0-9a-f]{16})", output.read_text()))
    assert set(ranks) == {"0", "1"}, output.read_text()[-4000:]
    assert ranks["0"] == ranks["1"]
    assert (tmp_path / "pipeline" / "unet" / "config.json").is_file()
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + 3

"""Multi-process training through torchrun (torch.distributed): one process per GPU, started by
the train job when its `gpu` resource asks for more than one. On CPU the processes use the gloo
backend (how the launch path is tested); on CUDA, NCCL with one device per process.

    python -m torch.distributed.run --standalone --nproc_per_node N -m mnemo.diffusion.distributed job.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO

import torch

from mnemo.diffusion.training_job import TrainingJob, run_training_job


def launch(job: TrainingJob, processes: int, job_file: str | Path, stdout: IO | None = None,
           timeout: float | None = None) -> None:
    """Run `job` in `processes` torchrun processes; raise CalledProcessError if any fails."""
    Path(job_file).parent.mkdir(parents=True, exist_ok=True)
    Path(job_file).write_text(json.dumps(asdict(job), indent=2) + "\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "mnemo.diffusion.distributed", str(job_file)]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, job.threads)))
    subprocess.run(command, check=True, stdout=stdout, stderr=subprocess.STDOUT if stdout else None, env=env,
                   timeout=timeout)


def _worker(job_file: str) -> None:
    """One torchrun process: join the group, train on its shard, rank 0 writes the outputs."""
    import torch.distributed as dist

    job = TrainingJob(**json.loads(Path(job_file).read_text()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(job.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        from mnemo.workflow import configure_torch, fault_point

        configure_torch(job.threads, device)  # as the single-process job does
        result = run_training_job(job, device=device, on_checkpoint=lambda step: fault_point("train", step))
        print(f"rank {dist.get_rank()}: {len(result.history) - result.resumed_from_step} steps, "
              f"weights {result.weights_digest}", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])

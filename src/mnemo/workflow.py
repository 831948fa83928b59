"""Glue between Snakemake `script:` jobs and the library: logging, threads, device, atomic files.

Scripts under `scripts/` call `job(snakemake)` first so that everything the job prints (tqdm
included) lands in the rule's `log:` file, then hand typed arguments to library functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

EXPECTED_ERRORS = ("ConfigError", "DatasetError", "BadImageError", "FileNotFoundError")


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config key 'device': {name} requested but CUDA is not available")
    return device


def configure_torch(threads: int, device: torch.device | None = None) -> None:
    import torch

    device = device or torch.device("cpu")
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def job(snakemake: Any) -> Iterator[logging.Logger]:
    """Redirect stdout/stderr to the rule's log and configure torch; log expected errors plainly."""
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("w", buffering=1)
    sys.stdout = sys.stderr = handle
    logging.basicConfig(stream=handle, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    logger = logging.getLogger(f"mnemo.{snakemake.rule}")
    settings = _torch_param(snakemake)
    if settings is None:  # a job that computes nothing device-bound: the rule's threads, on the CPU
        device, threads = None, snakemake.threads
    else:
        device = resolve_device(settings["device"])
        threads = snakemake.threads if settings["threads"] == "auto" else int(settings["threads"])
    if device is None and "torch" not in sys.modules:
        # a job whose code never imports torch is spared its import (seconds per job); should it
        # import torch after all, OpenMP reads its thread count from here
        os.environ["OMP_NUM_THREADS"] = str(max(1, int(threads)))
    else:
        configure_torch(threads, device)
    logger.info("rule %s, wildcards %s, device %s, threads %s", snakemake.rule, dict(snakemake.wildcards),
                device or "- (no torch param)", threads)
    try:
        yield logger
    except Exception as error:
        if type(error).__name__ in EXPECTED_ERRORS:
            # the log (under results/) gets the message without patient file names; the
            # terminal gets the full one, so that the user can find the file to fix
            public = getattr(error, "public", None) or str(error)
            logger.error("%s", public)
            handle.flush()
            if public != str(error):
                print(f"{error}", file=sys.__stderr__, flush=True)
            raise SystemExit(1) from None  # the message is the diagnosis; no traceback
        logger.exception("job failed")
        raise


def fault_point(stage: str, count: int) -> None:
    """Fault injection for the reliability tests: `MNEMO_FAULT=stage:count` makes the job kill
    itself with SIGKILL when `stage` reaches `count` (e.g. `train:3` = after the step-3
    checkpoint, `generate:1` = after the first batch). Unset in normal runs: does nothing."""
    spec = os.environ.get("MNEMO_FAULT", "")
    if spec and spec == f"{stage}:{count}":
        import signal

        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def notify(logger: logging.Logger, message: str) -> None:
    """Log a message and also show it on the terminal that runs Snakemake."""
    logger.warning("%s", message)
    print(message, file=sys.__stderr__, flush=True)


def _torch_param(snakemake: Any) -> dict[str, Any] | None:
    """The rule's `torch` param (`torch_settings` in rules/common.smk), None when it has none."""
    return getattr(snakemake.params, "torch", None)


def torch_settings(snakemake: Any) -> dict[str, Any]:
    """Device, threads (and for model rules dtype, pretrained) from the rule's params: scripts never
    read the config, so that Snakemake's params trigger sees every value a job runs with."""
    settings = _torch_param(snakemake)
    if settings is None:
        raise RuntimeError(f"rule {snakemake.rule} runs torch on a device but has no `torch` param: add "
                           "`torch=torch_settings()` to its params (rules/common.smk)")
    return settings


def device_of(snakemake: Any) -> torch.device:
    return resolve_device(torch_settings(snakemake)["device"])


def write_json(data: Any, path: str | Path) -> None:
    """Write JSON atomically (tmp + rename) so an interrupted job leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(table, path: str | Path) -> None:
    """Atomic Parquet write."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)

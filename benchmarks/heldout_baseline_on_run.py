"""The held-out copy baseline on a finished run's unmitigated samples, per descriptor and variant.

Why: runs made before the baseline existed (or a run whose match jobs should not rerun) can still
be asked how many samples copy beyond what held-out patients give. The calls are those of
scripts/match.py; the held-out cache and embeddings must exist:

    snakemake --cores 2 --rerun-triggers mtime -- results/embeddings/{copydetect,pixel}/valid.parquet
    python benchmarks/heldout_baseline_on_run.py results
"""
import json
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from mnemo.copydetect.embeddings import read_embeddings
from mnemo.copydetect.replication import MatchConfig, heldout_baseline, match_samples
from mnemo.data.dataset import patients_by_image

R = sys.argv[1]  # the results folder
patients = patients_by_image(f"{R}/cache/train")
held_patients = patients_by_image(f"{R}/cache/valid")
prompts = pq.read_table(f"{R}/prompts/prompts.parquet")
for descriptor in ("copydetect", "pixel"):
    threshold = json.loads(Path(f"{R}/descriptors/{descriptor}/calibration.json").read_text())["threshold"]
    train = read_embeddings(f"{R}/embeddings/{descriptor}/train.parquet")
    heldout = read_embeddings(f"{R}/embeddings/{descriptor}/valid.parquet")
    for variant in ("cfg", "nocfg", "filtered"):
        samples = read_embeddings(f"{R}/embeddings/{descriptor}/{variant}/none.parquet")
        rows = pq.read_table(f"{R}/samples/{variant}/none.parquet", columns=["sample_id", "prompt_id", "guidance"])
        base = heldout_baseline(samples, train, heldout, held_patients, 0.01, MatchConfig())
        m = match_samples(samples, rows, train, patients, prompts, MatchConfig(), baseline=base)
        out = duckdb.sql(f"""SELECT CASE WHEN p."group" = 'planted' THEN 'planted' ELSE 'not planted' END AS g,
              m.guidance, count(*) AS n, avg(CAST(m.nn_similarity > {threshold} AS DOUBLE)) AS above_threshold,
              avg(CAST(m.beyond_heldout AS DOUBLE)) AS beyond_heldout, median(m.nn_similarity) AS nn,
              median(m.heldout_similarity) AS heldout
              FROM m JOIN prompts p USING (prompt_id) GROUP BY ALL ORDER BY g, guidance""").fetchall()
        print(f"{descriptor} {variant}: held-out {base.images} images of {base.patients} patients, "
              f"margin {base.margin:.4f} at fpr 0.01, threshold {threshold:.3f}")
        for r in out:
            print(f"  {r[0]:12s} g={r[1]:<4g} n={r[2]:4d} above threshold {r[3]:.2f}  beyond held-out {r[4]:.2f}  "
                  f"median nn {r[5]:.3f}  median held-out {r[6]:.3f}")

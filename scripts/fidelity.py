import pyarrow.parquet as pq

from mnemo.copydetect.descriptors import CopyDetectNet
from mnemo.data.dataset import cache_images, read_cache
from mnemo.evaluate.fidelity import FeatureExtractor, LabelClassifier, evaluate_sample_set
from mnemo.workflow import device_of, job, write_json

with job(snakemake) as log:
    device = device_of(snakemake)
    classifier = LabelClassifier.from_pretrained(snakemake.input.classifier, device=device)
    extractor = None
    if hasattr(snakemake.input, "features"):
        extractor = FeatureExtractor(CopyDetectNet.from_pretrained(snakemake.input.features, device=device))
    prompts = pq.read_table(snakemake.input.prompts, columns=["prompt_id", "group"]).to_pylist()
    groups = {r["prompt_id"]: r["group"] for r in prompts}
    real = cache_images(read_cache(snakemake.input.cache, columns=["image"]))
    rows = evaluate_sample_set(classifier, extractor, real, pq.read_table(snakemake.input.samples), groups)
    write_json(rows, snakemake.output[0])
    for row in rows:
        log.info("%s", row)

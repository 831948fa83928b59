import pyarrow.parquet as pq

from mnemo.copydetect.descriptors import build_descriptor
from mnemo.copydetect.embeddings import Embeddings, embed_in_chunks, write_embeddings
from mnemo.data.dataset import cache_images, read_cache
from mnemo.data.images import decode_pngs
from mnemo.workflow import device_of, fault_point, job

with job(snakemake) as log:
    name = snakemake.wildcards.descriptor
    if snakemake.params.source == "cache":
        table = read_cache(snakemake.input.images, columns=["image_id", "image"])
        ids, images = table.column("image_id").to_pylist(), cache_images(table)
    else:
        table = pq.read_table(snakemake.input.images, columns=["sample_id", "image"])
        ids, images = table.column("sample_id").to_pylist(), decode_pngs(table.column("image").to_pylist())
    descriptor = build_descriptor(name, snakemake.params.settings, snakemake.input.get("descriptor_model"),
                                  device_of(snakemake))
    vectors = embed_in_chunks(descriptor, images, on_chunk=lambda i: fault_point("embed", i))
    write_embeddings(Embeddings(ids, vectors, name, descriptor.recipe), snakemake.output[0])
    log.info("embedded %d images with %s (%s), dim %d", len(ids), name, descriptor.recipe, vectors.shape[1])

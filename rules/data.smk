# Stage 1: synthetic phantom studies (demo only) and the Parquet dataset cache.


rule phantoms:
    output:
        train=f"{R}/data/phantoms/train.csv",
        valid=f"{R}/data/phantoms/valid.csv",
        planted=f"{R}/data/phantoms/planted.csv",
    params:
        phantoms=config["phantoms"],
    log:
        f"{R}/logs/phantoms.log",
    benchmark:
        f"{R}/benchmarks/phantoms.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    input:
        code("phantoms", "chexpert", "prompts"),
    script:
        "../scripts/phantoms.py"


rule cache_dataset:
    input:
        code("dataset", "chexpert", "prompts", "privacy", "images"),
        csv=lambda wc: dataset_csv(wc.split),
        salt=config["privacy"]["salt_file"],
    output:
        cache=directory(f"{R}/cache/{{split}}"),
        rejected=f"{R}/cache/{{split}}_rejected.csv",
        summary=f"{R}/cache/{{split}}_summary.json",
    params:
        image_root=dataset_root(),
        dataset=config["dataset"],
    log:
        f"{R}/logs/cache_dataset/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/cache_dataset/{{split}}.tsv"
    threads: config["dataset"]["workers"]
    resources:
        mem_mb=4000,
        runtime=120,
    script:
        "../scripts/cache_dataset.py"


rule prompts:
    input:
        code("promptset", "prompts", "chexpert", "privacy"),
        cache=f"{R}/cache/train",
        planted=planted_manifest(),
        salt=config["privacy"]["salt_file"],
    output:
        f"{R}/prompts/prompts.parquet",
    params:
        prompts=config["prompts"],
        uncertainty=config["dataset"]["uncertainty"],
    log:
        f"{R}/logs/prompts.log",
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/prompts.py"

# Stage 1: the dataset cache and the evaluation prompt set. X-ray track: phantom studies (demo) or
# a CheXpert-layout dataset. Stable Diffusion track (dataset.source: prompts): prompts from NeMo's
# or Wen's files and, optionally, the original training images of the memorized prompts.

if xray():

    rule phantoms:
        input:
            code("phantoms"),
        output:
            train=f"{R}/data/phantoms/train.csv",
            valid=f"{R}/data/phantoms/valid.csv",
            planted=f"{R}/data/phantoms/planted.csv",
        params:
            phantoms=config["phantoms"],
        conda:
            "../envs/mnemo.yaml"
        log:
            f"{R}/logs/phantoms.log",
        benchmark:
            f"{R}/benchmarks/phantoms.tsv"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        script:
            "../scripts/phantoms.py"

    rule cache_dataset:
        input:
            code("cache_dataset"),
            csv=lambda wc: dataset_csv(wc.split),
        output:
            cache=directory(f"{R}/cache/{{split}}"),
            rejected=f"{R}/cache/{{split}}_rejected.csv",
            summary=f"{R}/cache/{{split}}_summary.json",
        params:
            salt_file=config["privacy"]["salt_file"],
            image_root=dataset_root(),
            dataset=config["dataset"],
        conda:
            "../envs/mnemo.yaml"
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
            code("prompts"),
            cache=f"{R}/cache/train",
            planted=planted_manifest(),
        output:
            f"{R}/prompts/prompts.parquet",
        params:
            salt_file=config["privacy"]["salt_file"],
            prompts={key: config["prompts"][key] for key in ("other", "heldout", "seed")},
            uncertainty=config["dataset"]["uncertainty"],
        conda:
            "../envs/mnemo.yaml"
        log:
            f"{R}/logs/prompts.log",
        resources:
            mem_mb=2000,
            runtime=10,
        script:
            "../scripts/prompts.py"

else:

    rule prompts_from_files:
        input:
            code("prompts_from_files"),
            memorized=config["prompts"].get("memorized") or [],
            unmemorized=config["prompts"].get("unmemorized") or [],
        output:
            f"{R}/prompts/prompts.parquet",
        params:
            prompts=config["prompts"],
        conda:
            "../envs/mnemo.yaml"
        log:
            f"{R}/logs/prompts.log",
        resources:
            mem_mb=2000,
            runtime=10,
        script:
            "../scripts/prompts_from_files.py"

    rule cache_originals:
        input:
            code("cache_originals"),
            memorized=config["prompts"].get("memorized") or [],
        output:
            cache=directory(f"{R}/cache/train"),
            summary=f"{R}/cache/train_summary.json",
        params:
            prompts=config["prompts"],
            resolution=config["dataset"]["resolution"],
        conda:
            "../envs/mnemo.yaml"
        log:
            f"{R}/logs/cache_originals.log",
        benchmark:
            f"{R}/benchmarks/cache_dataset/train.tsv"
        resources:
            mem_mb=4000,
            runtime=60,
        script:
            "../scripts/cache_originals.py"


# What the models train on, for the report: the training images of the prompts listed as memorized
# (planted studies, or the originals of the prompt files' memorized prompts) and others at random.
rule data_preview:
    input:
        code("data_preview"),
        cache=f"{R}/cache/train",
        summary=f"{R}/cache/train_summary.json",
        prompts=f"{R}/prompts/prompts.parquet",
    output:
        report(
            f"{R}/cache/train_preview.png",
            caption="../report/data.rst",
            category="1. Data",
            labels={"figure": "training images"},
        ),
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/data_preview.log",
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/data_preview.py"

# Stage 6a: semantic validation of samples: label fidelity (a classifier trained on the cache)
# and Fréchet distance in the in-house descriptor's feature space.


rule train_classifier:
    input:
        code("train_classifier"),
        cache=f"{R}/cache/train",
    output:
        model=directory(f"{R}/fidelity/classifier/model"),
        evaluation=f"{R}/fidelity/classifier/evaluation.json",
        history=f"{R}/fidelity/classifier/training_log.csv",
    params:
        torch=torch_settings(),
        fidelity=config["fidelity"],
        holdout=config["match"]["calibration"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/train_classifier.log",
    benchmark:
        f"{R}/benchmarks/train_classifier.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpus(),
    script:
        "../scripts/train_classifier.py"


rule fidelity:
    input:
        code("fidelity"),
        unpack(lambda wc: frechet_features()),
        classifier=f"{R}/fidelity/classifier/model",
        samples=f"{R}/samples/{{variant}}/{{mitigation}}.parquet",
        prompts=f"{R}/prompts/prompts.parquet",
        cache=f"{R}/cache/train",
    output:
        f"{R}/fidelity/{{variant}}/{{mitigation}}.json",
    params:
        torch=torch_settings(),
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/fidelity/{{variant}}/{{mitigation}}.log",
    benchmark:
        f"{R}/benchmarks/fidelity/{{variant}}/{{mitigation}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/fidelity.py"


# A_CLIP (NeMo's evaluation): each sample's CLIP image-text alignment with its prompt, with the local
# CLIP model of `clip.model`; no job without one (the tables say n/a).
rule clip_alignment:
    input:
        code("clip_alignment"),
        clip=lambda wc: config["clip"]["model"],
        samples=f"{R}/samples/{{variant}}/{{mitigation}}.parquet",
        prompts=f"{R}/prompts/prompts.parquet",
    output:
        f"{R}/clip/{{variant}}/{{mitigation}}.parquet",
    params:
        torch=torch_settings(),
        batch_size=config["clip"]["batch_size"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/clip_alignment/{{variant}}/{{mitigation}}.log",
    benchmark:
        f"{R}/benchmarks/clip_alignment/{{variant}}/{{mitigation}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpus(),
    script:
        "../scripts/clip_alignment.py"

# Stage 3b: copy-detection descriptors, embeddings and nearest-neighbour matching.


rule train_copydetect:
    input:
        code("train_copydetect"),
        cache=f"{R}/cache/train",
    output:
        model=directory(f"{R}/descriptors/{{descriptor}}/model"),
        history=f"{R}/descriptors/{{descriptor}}/training_log.csv",
    params:
        torch=torch_settings(),
        settings=lambda wc: config["descriptors"][wc.descriptor],
        holdout=config["match"]["calibration"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/train_copydetect/{{descriptor}}.log",
    benchmark:
        f"{R}/benchmarks/train_copydetect/{{descriptor}}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=gpus(),
    script:
        "../scripts/train_copydetect.py"


rule calibrate_descriptor:
    input:
        code("calibrate_descriptor"),
        unpack(descriptor_model),
        cache=f"{R}/cache/train",
    output:
        f"{R}/descriptors/{{descriptor}}/calibration.json",
    params:
        torch=torch_settings(),
        settings=lambda wc: config["descriptors"][wc.descriptor],
        holdout=config["match"]["calibration"],
        every_image=not xray(),  # SD originals: no descriptor trains on them, calibrate on all
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/calibrate_descriptor/{{descriptor}}.log",
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
    script:
        "../scripts/calibrate_descriptor.py"


rule embed_cache:
    input:
        code("embed"),
        unpack(descriptor_model),
        images=f"{R}/cache/{{split}}",
    output:
        f"{R}/embeddings/{{descriptor}}/{{split}}.parquet",
    params:
        torch=torch_settings(),
        settings=lambda wc: config["descriptors"][wc.descriptor],
        source="cache",
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/embed_cache/{{descriptor}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/embed_cache/{{descriptor}}/{{split}}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=gpus(),
    script:
        "../scripts/embed.py"


rule embed_samples:
    input:
        code("embed"),
        unpack(descriptor_model),
        images=f"{R}/samples/{{variant}}/{{mitigation}}.parquet",
    output:
        f"{R}/embeddings/{{descriptor}}/{{variant}}/{{mitigation}}.parquet",
    params:
        torch=torch_settings(),
        settings=lambda wc: config["descriptors"][wc.descriptor],
        source="samples",
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/embed_samples/{{descriptor}}/{{variant}}/{{mitigation}}.log",
    benchmark:
        f"{R}/benchmarks/embed_samples/{{descriptor}}/{{variant}}/{{mitigation}}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=gpus(),
    script:
        "../scripts/embed.py"


rule match:
    input:
        code("match"),
        unpack(heldout_inputs),
        samples=f"{R}/embeddings/{{descriptor}}/{{variant}}/{{mitigation}}.parquet",
        sample_rows=f"{R}/samples/{{variant}}/{{mitigation}}.parquet",
        train=f"{R}/embeddings/{{descriptor}}/train.parquet",
        cache=f"{R}/cache/train",
        prompts=f"{R}/prompts/prompts.parquet",
        calibration=f"{R}/descriptors/{{descriptor}}/calibration.json",
    output:
        matches=f"{R}/matches/{{descriptor}}/{{variant}}/{{mitigation}}.parquet",
        prompts=f"{R}/matches/{{descriptor}}/{{variant}}/{{mitigation}}_prompts.parquet",
    params:
        torch=torch_settings(),
        match=config["match"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/match/{{descriptor}}/{{variant}}/{{mitigation}}.log",
    benchmark:
        f"{R}/benchmarks/match/{{descriptor}}/{{variant}}/{{mitigation}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/match.py"

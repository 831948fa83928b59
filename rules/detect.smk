# Stage 4: memorization detectors per variant (Wen magnitude, NeMo SSIM, token significance).


rule detect:
    input:
        code("detect"),
        model=model_dir,
        prompts=f"{R}/prompts/prompts.parquet",
    output:
        scores=f"{R}/detect/{{variant}}/scores.parquet",
        pairwise=f"{R}/detect/{{variant}}/nemo_pairwise.parquet",
        tokens=f"{R}/detect/{{variant}}/token_significance.parquet",
        threshold=f"{R}/detect/{{variant}}/threshold.json",
    params:
        torch=torch_settings(model=True),
        detect=config["detect"],
        seed=config["generate"]["seed"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/detect/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/detect/{{variant}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpus(),
    script:
        "../scripts/detect.py"

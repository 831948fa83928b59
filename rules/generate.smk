# Stage 3: seeded generation per variant and mitigation (config `variants.<v>.mitigations`).


rule generate:
    input:
        code("generate"),
        unpack(mitigation_inputs),
        model=model_dir,
        prompts=f"{R}/prompts/prompts.parquet",
    output:
        samples=f"{R}/samples/{{variant}}/{{mitigation}}.parquet",
        info=f"{R}/samples/{{variant}}/{{mitigation}}_info.parquet",
    params:
        torch=torch_settings(model=True),
        generate=config["generate"],
        guidance=lambda wc: guidance_of(wc.variant, wc.mitigation),
        mitigation=lambda wc: config["mitigations"][wc.mitigation],
        blocks=localize_setting("blocks"),
        search_mode=localize_setting("mode"),
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/generate/{{variant}}/{{mitigation}}.log",
    benchmark:
        f"{R}/benchmarks/generate/{{variant}}/{{mitigation}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpus(),
    script:
        "../scripts/generate.py"

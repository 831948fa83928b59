# Stage 3: seeded generation per variant and mitigation (config `variants.<v>.mitigations`).


def mitigation_inputs(wildcards):
    """Neuron mitigations read the localized neurons; Wen's embedding mitigation reads detection."""
    kind = config["mitigations"][wildcards.mitigation]["kind"]
    if kind in ("nemo", "nemo_global", "random"):
        return {"neurons": f"{R}/localize/{wildcards.variant}/neurons.parquet"}
    if kind == "wen_embedding":
        return {"scores": f"{R}/detect/{wildcards.variant}/scores.parquet"}
    return {}


rule generate:
    input:
        code("sample", "model", "mitigate", "images"),
        unpack(mitigation_inputs),
        model=f"{R}/models/{{variant}}/pipeline",
        prompts=f"{R}/prompts/prompts.parquet",
    output:
        samples=f"{R}/samples/{{variant}}/{{mitigation}}.parquet",
        info=f"{R}/samples/{{variant}}/{{mitigation}}_info.parquet",
        sheet=report(
            f"{R}/samples/{{variant}}/{{mitigation}}.png",
            caption="../report/samples.rst",
            category="3. Generation",
            labels={"variant": "{variant}", "mitigation": "{mitigation}", "figure": "contact sheet"},
        ),
    params:
        generate=config["generate"],
        guidance=lambda wc: config["variants"][wc.variant]["guidance"],
        mitigation=lambda wc: config["mitigations"][wc.mitigation],
        blocks=config["localize"]["blocks"],
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

"""Conditioning prompts: text from labels and demographics, tokenizer and text encoder.

The prompt text is the one interface between the data and every model: the dataset cache writes
it, training encodes it, generation and detection read it back. The tokenizer and text encoder
are ordinary `transformers` objects so that the same downstream code runs on Stable Diffusion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mnemo.data.chexpert import positive_observations


def age_group(age: float | int | None) -> str:
    """Age decade as a word ('60s'); CheXpert ages run 18-90, unknown ages give 'unknown age'."""
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return "unknown-age"
    decade = min(90, max(10, int(age) // 10 * 10))
    return f"{decade}s"


def view_words(frontal_lateral: str, ap_pa: str | None) -> list[str]:
    """'Frontal','PA' -> ['frontal', 'PA']; 'Lateral' -> ['lateral']."""
    words = [frontal_lateral.strip().lower()]
    if words[0] == "frontal" and ap_pa and str(ap_pa).strip() and str(ap_pa).strip().upper() != "NAN":
        words.append(str(ap_pa).strip().upper())
    return words


def prompt_text(
    frontal_lateral: str,
    ap_pa: str | None,
    sex: str,
    age: float | int | None,
    labels: Mapping[str, float],
    policy: str,
) -> str:
    """'frontal PA female 60s cardiomegaly pleural effusion' (observations in CheXpert order)."""
    words = view_words(frontal_lateral, ap_pa)
    words.append(str(sex).strip().lower() or "unknown-sex")
    words.append(age_group(age))
    words.extend(o.lower() for o in positive_observations(labels, policy))
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# Tokenizer and text encoder
# ---------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def schema_words() -> list[str]:
    """Every word a CheXpert prompt can contain, so held-out label combinations never hit <unk>."""
    from mnemo.data.chexpert import OBSERVATIONS

    words = ["frontal", "lateral", "AP", "PA", "female", "male", "unknown-sex", "unknown-age"]
    words += [f"{d}s" for d in range(10, 100, 10)]
    for observation in OBSERVATIONS:
        words += observation.lower().split()
    return words


def build_tokenizer(prompts: list[str], max_length: int):
    """Word-level tokenizer whose vocabulary is the schema's words plus any word in `prompts`.

    A word-level vocabulary is exact for label prompts (no sub-word splits of 'cardiomegaly'),
    and as a `PreTrainedTokenizerFast` it saves, loads and pads exactly like CLIP's tokenizer.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words: dict[str, None] = dict.fromkeys(schema_words())
    for prompt in prompts:
        words.update(dict.fromkeys(prompt.split()))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def tokenize(tokenizer, prompts: list[str], max_length: int | None = None):
    """Prompt strings -> (N, max_length) token ids, padded and truncated as Stable Diffusion does."""
    length = max_length or tokenizer.model_max_length
    return tokenizer(
        list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids

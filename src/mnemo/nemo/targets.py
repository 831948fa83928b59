"""Which prompts NeMo localizes (`localize.prompts`). NeMo searches the prompts its detection flags,
unmemorized ones it flags included; a user may rather localize the prompts the prompt set lists as
memorized, flagged or not, or every prompt (prompts with no localization sample above tau are
recorded, not searched)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

LOCALIZE_PROMPTS = ("flagged", "memorized", "all")


def prompts_to_localize(prompts: Sequence[Mapping], scores: Sequence[Mapping], which: str) -> list[str]:
    """Prompt ids in the prompt set's order: `flagged` by NeMo's detection (scores' nemo_flagged),
    `memorized` as listed (the prompt set's memorized_truth), or `all`."""
    if which not in LOCALIZE_PROMPTS:
        raise ValueError(f"localize.prompts: {which!r} is not one of {', '.join(LOCALIZE_PROMPTS)}")
    flagged = {r["prompt_id"] for r in scores if r["nemo_flagged"]}
    chosen = {
        "flagged": lambda row: row["prompt_id"] in flagged,
        "memorized": lambda row: bool(row["memorized_truth"]),
        "all": lambda row: True,
    }[which]
    return [row["prompt_id"] for row in prompts if chosen(row)]

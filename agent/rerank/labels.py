"""Short candidate labels, and the check that each is one token where the answer starts.

Letters A..Z: with SmolLM2's tokenizer each capital letter is one token both on its own
("A" = id 49) and after a space (" A" = id 330), and the chat template ends the prompt with
``<|im_start|>assistant\\n``, so the first generated token of an answer "B" is exactly the
label's token. Numbers are one token only up to 9 ("10" is "1" + "0"), hence letters for the
verbalizer; the listwise reranker can use either (``numbers`` for windows over 26).
``label_token_ids`` verifies this with the real tokenizer and chat template.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Literal

LabelStyle = Literal["letters", "numbers"]
LETTERS: tuple[str, ...] = tuple(string.ascii_uppercase)


def make_labels(n: int, style: LabelStyle = "letters") -> list[str]:
    """``n`` labels in display order: A, B, C... or 1, 2, 3..."""
    if n < 0:
        raise ValueError(f"label count must be >= 0, got {n}")
    if style == "numbers":
        return [str(i + 1) for i in range(n)]
    if n > len(LETTERS):
        raise ValueError(f"{n} candidates need more than {len(LETTERS)} letter labels")
    return list(LETTERS[:n])


def label_token_ids(
    tokenizer: Any, messages: Sequence[dict[str, str]], labels: Sequence[str]
) -> dict[str, int]:
    """Each label's token id as the first token of the assistant's answer.

    Renders the chat with the label as the assistant's reply and compares with the
    generation prompt: the reply must add exactly one token before the end-of-turn marker.
    Raises ValueError naming the labels that are not one token there.
    """
    prompt = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out: dict[str, int] = {}
    bad: list[str] = []
    for label in labels:
        ids = tokenizer(prompt + label, add_special_tokens=False)["input_ids"]
        added = ids[len(prompt_ids) :]
        if ids[: len(prompt_ids)] != prompt_ids or len(added) != 1:
            bad.append(f"{label!r} -> {added}")
        else:
            out[label] = int(added[0])
    if bad:
        raise ValueError("labels that are not one token at the answer start: " + ", ".join(bad))
    return out

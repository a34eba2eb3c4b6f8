"""The fixed texts measurements run on, tokenized on the host so tokenizing is never timed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# Topics of Python's own reference manual, shipped with every CPython as pydoc_data.topics.
EVAL_TOPICS = ("assignment", "atom-identifiers", "augassign", "binary", "booleans", "calls",
               "class", "comparisons", "compound", "context-managers", "exceptions", "execmodel")
PROMPT_TOPICS = ("for", "while", "if", "try", "with", "function")


@dataclass(frozen=True)
class TokenizedText:
    prompt_ids: tuple[int, ...]
    windows: tuple[tuple[int, ...], ...]
    text_sha256: str


def english_text(topics: tuple[str, ...]) -> str:
    from pydoc_data.topics import topics as all_topics

    return "\n\n".join(all_topics[name] for name in topics if name in all_topics)


def tokenize(tokenizer_file: Path, prompt_tokens: int, windows: int, window_tokens: int) -> TokenizedText:
    """The prompt and the evaluation windows; fails if the text is too short for them."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    eval_text = english_text(EVAL_TOPICS)
    prompt_text = english_text(PROMPT_TOPICS)
    eval_ids = tokenizer.encode(eval_text, add_special_tokens=False).ids
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False).ids
    needed = windows * window_tokens
    if len(eval_ids) < needed or len(prompt_ids) < prompt_tokens:
        raise ValueError(f"evaluation text has {len(eval_ids)} tokens, prompt text {len(prompt_ids)}; "
                         f"need {needed} and {prompt_tokens}")
    chunks = tuple(tuple(eval_ids[i * window_tokens:(i + 1) * window_tokens]) for i in range(windows))
    digest = hashlib.sha256((eval_text + "\0" + prompt_text).encode()).hexdigest()
    return TokenizedText(tuple(prompt_ids[:prompt_tokens]), chunks, digest)

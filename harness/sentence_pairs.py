"""The sentence-similarity set that sentence-embedding suites are judged on.

The pairs are EdgeGate's own (``data/similarity_pairs.tsv``), each graded 0 (unrelated) to 5
(same meaning). They are tokenized here, on the host, so the runner needs no tokenizer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

SET_FILE = Path(__file__).resolve().parent / "data" / "similarity_pairs.tsv"
MAX_SCORE = 5.0


@dataclass(frozen=True)
class SentencePair:
    first: str
    second: str
    score: float  # 0 (unrelated) .. 5 (same meaning)


@dataclass(frozen=True)
class TokenizedPairs:
    """Each distinct sentence once (in order of appearance), and the pairs as indices into them."""

    sentences: tuple[tuple[int, ...], ...]
    pairs: tuple[tuple[int, int], ...]
    gold: tuple[float, ...]
    text_sha256: str


def load_pairs(path: Path = SET_FILE) -> tuple[SentencePair, ...]:
    """The pairs of a ``score<TAB>sentence<TAB>sentence`` file; ``#`` lines are comments."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"{path}: line {number}: expected score, sentence, sentence separated by tabs")
        try:
            score = float(fields[0])
        except ValueError:
            raise ValueError(f"{path}: line {number}: score {fields[0]!r} is not a number") from None
        if not 0.0 <= score <= MAX_SCORE:
            raise ValueError(f"{path}: line {number}: score {score} is outside 0-{MAX_SCORE:g}")
        pairs.append(SentencePair(fields[1].strip(), fields[2].strip(), score))
    return tuple(pairs)


def tokenize_pairs(tokenizer_file: Path, max_tokens: int, path: Path = SET_FILE) -> TokenizedPairs:
    """Token ids with the tokenizer's own special tokens, cut at ``max_tokens``, unpadded."""
    from tokenizers import Tokenizer

    pairs = load_pairs(path)
    texts = list(dict.fromkeys(text for pair in pairs for text in (pair.first, pair.second)))
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    ids = tuple(tuple(encoding.ids) for encoding in tokenizer.encode_batch(texts))
    index = {text: position for position, text in enumerate(texts)}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return TokenizedPairs(ids, tuple((index[p.first], index[p.second]) for p in pairs),
                          tuple(p.score for p in pairs), digest)

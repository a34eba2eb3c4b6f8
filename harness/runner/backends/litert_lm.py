"""LiteRT-LM: a ``.litertlm`` bundle run by the engine of ``litert-lm-api``.

The engine takes text, not token ids, and gives no logits: it scores a text (the log-likelihood
of each of its tokens) and returns the text it samples. So this backend is a ``ScoringBackend``:
perplexity comes from ``target_nll``, KL and top-1 agreement are unavailable. Given ids become
text with the bundle's own tokenizer, cut into pieces that each tokenize back into exactly their
ids (one piece, unless e.g. two newline tokens at the end would merge into one), so the engine
reads the very ids it is given; a token with no text of its own (part of a UTF-8 character) at
the start of a piece raises.

Pitfalls of litert-lm-api 0.18.1, each found by comparing with the same weights in torch:

- ``run_text_scoring`` re-feeds the prefill's last token one position early, over the slot of
  the token before it, which then drops out of the context (after a one-token prefill with no
  start token nothing is attended at all). ``target_nll`` therefore prefills the context's last
  token twice (the second time in a prefill call of its own), and only the duplicate is lost.
  A bundle with a start token is scored after it: the engine prepends it to every session.
- A session decodes once: ``run_decode`` cannot be called again, and a new prefill of the
  sampled token counts it twice, since the engine already holds it as its next input.
  ``step`` rewinds the session to the runner's length first (``litert_lm_session_rewind_to_step``,
  in the library but not in its Python API), so a decode step feeds exactly the given token.
- One session per engine at a time: opening a prefill closes the previous session.
"""

from __future__ import annotations

import ctypes
import json
import os
from typing import Any

import numpy as np

from .base import resolve_threads, timed

REQUIRES = ("litert-lm-api==0.18.1",)
PYTHON_MIN = (3, 10)  # litert-lm-api 0.18.1: py3-none wheels, Requires-Python >=3.10

TIMING = ("prefill: the engine tokenizes the prompt's text, prefills all but its last token, "
          "decodes that one and samples greedily (the engine's first token); decode step: a rewind of "
          "the session to the runner's length (bookkeeping), the given token's text as the engine's "
          "next input, one decode step and greedy sampling. Both include the engine's tokenizing "
          "and detokenizing, which the other runtimes leave to the host")


class _Session:
    """The engine session that holds one sequence's KV cache (``None`` until a prefill opens it)."""

    def __init__(self) -> None:
        self.session: Any = None


class LiteRTLMBackend:
    """The LiteRT-LM engine on CPU, greedy sampling, scored text for perplexity. ``providers``
    and ``spin`` do not apply: the engine has no delegates to choose here and no spin setting."""

    NO_LOGITS = ("LiteRT-LM's engine gives no logits, only each scored token's log-likelihood "
                 "(perplexity) and the text it samples")

    def __init__(self, model_path: str, providers: list[str], threads: int, slowdown: float = 0.0,
                 spin: bool = True) -> None:
        import litert_lm

        self.slowdown = slowdown
        self.threads = resolve_threads(threads)
        litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)  # INFO lines for every call otherwise
        # ":nocache": no XNNPACK weight cache written beside the bundle (in the deployed, hashed
        # folder), and every load packs the weights alike instead of depending on an earlier run.
        self.engine = litert_lm.Engine(model_path, backend=litert_lm.Backend.CPU(thread_count=self.threads),
                                       cache_dir=":nocache")
        self._sampler = litert_lm.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0, seed=0)
        self._start = 1 if self.engine.bos_token_id is not None else 0  # the engine prepends it
        self._vocab = _vocabulary_size(os.path.join(os.path.dirname(model_path), "tokenizer.json"))
        self._rewind = _rewind_function(self.engine)
        self._open: Any = None

    def empty_past(self) -> _Session:
        return _Session()

    def step(self, input_ids: np.ndarray, past: _Session, past_len: int) -> tuple[np.ndarray, _Session, int]:
        """The engine's greedy next token after ``input_ids`` as a one-hot row (a stand-in, not
        logits: its argmax is what the engine sampled), the session, the engine calls' time."""
        texts = self.texts([int(i) for i in input_ids[0]])
        if past.session is None:
            if past_len:
                raise ValueError(f"an empty past cannot follow {past_len} tokens")
            past.session = self._session(max_output_tokens=1)
        elif past.session is not self._open:
            raise RuntimeError("LiteRT-LM runs one session per engine: this past belongs to a closed one")

        def run() -> Any:
            if past_len:
                self._rewind_to(past.session, past_len + self._start)
            for text in texts:  # one, unless the ids' text as a whole tokenizes otherwise
                past.session.run_prefill([text])
            return past.session.run_decode()

        responses, elapsed_ns = timed(run, self.slowdown)
        return self._one_hot(self._picked(responses.texts[0], int(input_ids[0, -1]))), past, elapsed_ns

    def target_nll(self, window: list[int]) -> np.ndarray:
        """The engine's negative log-likelihood of each of ``window[1:]`` (nats), the context
        being exactly the window's tokens before it (after the bundle's start token, if any).

        Usually one scoring call; where the text of ``window[1:]`` tokenizes otherwise (two
        newline tokens at the window's end become one), the targets are scored in pieces that
        each give back their tokens, every piece after the window's tokens before it."""
        nll: list[float] = []
        start = 1
        while start < len(window):
            piece = self.chunks(window[start:])[0]
            nll += self._scored(window[:start], piece)
            start += len(piece)
        return np.asarray(nll, dtype=np.float64)

    def _scored(self, context: list[int], target: list[int]) -> list[float]:
        # The last context token goes in twice, as a chunk of its own: the scoring call
        # overwrites the first copy (see the module's note), not the token before it.
        chunks = self.texts(context) + self.texts(context[-1:])
        session = self._session()
        for chunk in chunks:
            session.run_prefill([chunk])
        scored = session.run_text_scoring([self.engine.detokenize(target)], store_token_lengths=True)
        session.close()
        self._open = None
        if scored.token_lengths != [len(target)] or len(scored.token_scores[0]) != len(target):
            raise RuntimeError(f"LiteRT-LM scored {scored.token_lengths} tokens of {len(target)}")
        return [-float(score) for score in scored.token_scores[0]]

    def texts(self, ids: list[int]) -> list[str]:
        """Texts that the engine, given one by one, reads as exactly ``ids``."""
        return [self.engine.detokenize(run) for run in self.chunks(ids)]

    def chunks(self, ids: list[int]) -> list[list[int]]:
        """``ids`` cut into runs whose text the engine tokenizes back into exactly that run."""
        runs = []
        while ids:
            runs.append(ids[:self._longest_run(ids)])
            ids = ids[len(runs[-1]):]
        return runs

    def _longest_run(self, ids: list[int]) -> int:
        length = len(ids)
        while length:
            again = self.engine.tokenize(self.engine.detokenize(ids[:length]))
            if again == ids[:length]:
                return length
            differs = next((i for i, (a, b) in enumerate(zip(ids, again)) if a != b), min(length, len(again)))
            length = differs if 0 < differs < length else length - 1
        raise ValueError(f"LiteRT-LM takes text, and token {ids[0]} has no text of its own "
                         f"({self.engine.detokenize(ids[:1])!r} tokenizes as {self.engine.tokenize(self.engine.detokenize(ids[:1]))}): "
                         f"a part of a character, which a window or prompt cannot start with here")

    def settings(self) -> dict[str, Any]:
        import importlib.metadata

        return {
            "runtime": "LiteRT-LM",
            "version": importlib.metadata.version("litert-lm-api"),
            "threads": self.threads,
            "backend": "CPU (XNNPACK)",
            "weight_cache": "off (weights packed at every load)",
            "sampling": "greedy (top-k 1); scores at temperature 1",
            "start_token": self.engine.bos_token_id,
            "logits": "none: step returns a one-hot row of the engine's greedy token, told from its text "
                      "(when that text is not one token, a partial UTF-8 byte or a stop token, the fed token)",
            "timing": TIMING,
        }

    def _session(self, max_output_tokens: int | None = None) -> Any:
        if self._open is not None:
            self._open.close()
        self._open = self.engine.create_session(apply_prompt_template=False, sampler_config=self._sampler,
                                                max_output_tokens=max_output_tokens)
        return self._open

    def _rewind_to(self, session: Any, step: int) -> None:
        if self._rewind(session._ptr, step) != 0:
            raise RuntimeError(f"LiteRT-LM could not rewind its session to step {step}")

    def _picked(self, text: str, fed: int) -> int:
        """The token the engine sampled, told from the text it returned: exact when that text is
        one token. A partial UTF-8 byte comes back as U+FFFD and a stop token as no text, and
        neither could be fed back as text: the fed token stands in (the timing does not depend
        on which token a step decodes)."""
        ids = self.engine.tokenize(text)
        return ids[0] if len(ids) == 1 else fed

    def _one_hot(self, token: int) -> np.ndarray:
        row = np.zeros((1, 1, max(self._vocab, token + 1)), dtype=np.float32)
        row[0, 0, token] = 1.0
        return row

    def __del__(self) -> None:
        if getattr(self, "_open", None) is not None:
            self._open.close()  # before the engine: it warns when destroyed with a live session


def _rewind_function(engine: Any) -> Any:
    rewind = engine._lib.litert_lm_session_rewind_to_step
    rewind.restype, rewind.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]
    return rewind


def _vocabulary_size(tokenizer_file: str) -> int:
    """Rows of the one-hot stand-in: the vocabulary of the tokenizer.json shipped beside the bundle."""
    if not os.path.exists(tokenizer_file):
        return 0
    with open(tokenizer_file, encoding="utf-8") as file:
        tokenizer = json.load(file)
    ids = list(tokenizer.get("model", {}).get("vocab", {}).values()) + [t["id"] for t in tokenizer.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0

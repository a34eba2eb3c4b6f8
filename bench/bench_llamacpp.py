"""The suite's ONNX variants against llama.cpp on the same GGUF weights, side by side in one run.

    python bench/bench_llamacpp.py [--suite suites/suite_smollm2.yaml] [--variants int8,q4_1,int4]
                                   [--rounds 5] [--threads 2] [--model NAME=PATH/model.onnx ...]

Needs the ``bench`` extra (llama-cpp-python) and the variants already built (``edgegate variants
build SUITE``); a variant not in the cache is skipped, never built. Each engine runs in its own
fresh process per round, engines interleaved (A B C A B C ...), so peak RSS (VmHWM) is the
engine's own. In each process: load, one warm-up pass, then one measured pass of
prefill of the same 128-token prompt, the first greedy token, and 64 greedy decode steps.

Figures: prefill tok/s (prompt tokens / the prompt's eval call), first-token latency (that call
plus picking the token), decode tok/s (64 tokens / the 64 steps, each step = runtime call + argmax),
peak RSS. The bandwidth ceiling of decode is read bandwidth / weight bytes read per token;
"% of ceiling" is decode tok/s over it. llama.cpp is given logits for the last position only;
the ONNX graph computes logits for every prompt position, which its prefill pays for.

Accuracy, after the timed rounds, one more process per engine: the suite's evaluation windows
(``measurements.accuracy``, tokenized as the harness does) through the harness's own backend for
the engine (llama.cpp's gives every position's logits for a window), against the suite's
reference variant (fp32) run the same way: perplexity as a ratio of the reference's, and top-1
agreement (the engine's most likely next token is the reference's) over all predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROMPT_TEXT = (
    "The history of computing is a story of machines that became smaller, faster and cheaper with "
    "every decade. Early computers filled entire rooms, consumed enormous amounts of electricity and "
    "were programmed by rewiring panels or feeding in punched cards. The invention of the transistor "
    "replaced fragile vacuum tubes, and the integrated circuit put thousands and then billions of "
    "transistors on a single chip. Personal computers arrived in homes and offices, followed by laptops, "
    "smartphones and tiny boards that cost less than a meal. Today a language model can run on a device "
    "that fits in a pocket, answering questions, summarizing documents and translating between languages "
    "without any connection to a data center. Engineers who build such systems must balance accuracy "
    "against memory, latency and power, because every byte of weights has to be read from memory for "
    "each token the model produces, and memory bandwidth rather than arithmetic is usually the limit."
)


@dataclass(frozen=True)
class Engine:
    """One thing to measure: llama.cpp on the GGUF, or onnxruntime on one variant's model.onnx."""

    name: str
    kind: str  # "llama_cpp" or "onnxruntime"
    model: str
    prompt_ids: tuple[int, ...]
    weight_bytes_per_token: int
    threads: int
    decode_tokens: int
    backend: str = "onnxruntime"  # the runner backend the harness would use (see session.decoder_backend)


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(run_child(Engine(**json.loads(args.child)))))
        return
    if args.accuracy_child:
        print(json.dumps(accuracy_child(**json.loads(args.accuracy_child))))
        return
    engines = plan_engines(args)
    bandwidth_gbs = measure_bandwidth(args.threads)
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {engine.name: [] for engine in engines}
    for round_index in range(args.rounds):
        for engine in engines:
            results[engine.name].append(spawn(engine))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    accuracy = {} if args.no_accuracy else measure_accuracy(args, engines)
    print_table(engines, results, bandwidth_gbs, accuracy)
    print(f"load average (1/5/15 min) before: {fmt_load(load_before)}, after: {fmt_load(os.getloadavg())}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path(__file__).resolve().parent.parent / "suites" / "suite_smollm2.yaml")
    parser.add_argument("--variants", default="int8,q4_1,int4", help="comma-separated variant names of the suite")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="also measure this model.onnx (a tokenizer.json beside it) under NAME (repeatable)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate"))
    parser.add_argument("--no-accuracy", action="store_true", help="skip the perplexity and top-1 columns")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--accuracy-child", help=argparse.SUPPRESS)
    return parser.parse_args()


def plan_engines(args: argparse.Namespace) -> list[Engine]:
    from edgegate.suites import load_suite
    from edgegate.variants import base_models

    suite = load_suite(args.suite)
    gguf_path = base_models.locate(suite.base_model)
    if gguf_path.gguf_file is None:
        raise SystemExit(f"{args.suite}: base_model is not a GGUF; llama.cpp needs one")
    gguf_file = gguf_path.folder / gguf_path.gguf_file
    llama_ids = llama_prompt_ids(str(gguf_file), args.prompt_tokens)
    engines = [Engine("llama.cpp", "llama_cpp", str(gguf_file), llama_ids, gguf_bytes_per_token(str(gguf_file)),
                      args.threads, args.decode_tokens)]
    folders = [(name, built_variant(suite, args.cache, name)) for name in filter(None, args.variants.split(","))]
    folders += [(name, Path(path).parent) for name, path in (entry.split("=", 1) for entry in args.model)]
    for name, folder in folders:
        if folder is None:
            continue
        onnx_ids = onnx_prompt_ids(folder / "tokenizer.json", args.prompt_tokens)
        same = sum(a == b for a, b in zip(onnx_ids, llama_ids))
        print(f"{name}: prompt token ids equal to the GGUF tokenizer's at {same}/{len(llama_ids)} positions")
        engines.append(Engine(name, "onnxruntime", str(folder / "model.onnx"), onnx_ids,
                              onnx_bytes_per_token(folder / "model.onnx"), args.threads, args.decode_tokens,
                              runner_backend(folder)))
    return engines


def runner_backend(folder: Path) -> str:
    from edgegate.session import decoder_backend
    from edgegate.variants.cache import read_manifest
    from edgegate.variants.factory import Artifact

    manifest = read_manifest(folder) or {}
    return decoder_backend(Artifact(manifest.get("recipe", ""), manifest.get("key", ""), folder, manifest))


def built_variant(suite: Any, cache_root: Path, name: str) -> Path | None:
    """The variant's cached folder, or None (with a line saying so) when it is not built."""
    from edgegate.variants.cache import read_manifest
    from edgegate.variants.factory import VariantFactory

    factory = VariantFactory(suite, cache_root)
    try:
        variant = suite.variant(name)
    except KeyError:
        print(f"{name}: the suite has no such variant; skipped")
        return None
    _, folder = factory.planned(variant)
    if read_manifest(folder) is None:
        print(f"{name}: not built ({folder.name} not in the cache); skipped - run `edgegate variants build`")
        return None
    # Not factory.artifact(): for a recipe with a parent it first finds or BUILDS the parent (the fp32
    # export, minutes), even when the variant itself is in the cache.
    return folder


def llama_prompt_ids(gguf_file: str, count: int) -> tuple[int, ...]:
    import llama_cpp

    vocab = llama_cpp.Llama(gguf_file, vocab_only=True, verbose=False)
    return _first(vocab.tokenize(PROMPT_TEXT.encode(), add_bos=False), count)


def onnx_prompt_ids(tokenizer_json: Path, count: int) -> tuple[int, ...]:
    from tokenizers import Tokenizer

    return _first(Tokenizer.from_file(str(tokenizer_json)).encode(PROMPT_TEXT, add_special_tokens=False).ids, count)


def _first(ids: list[int], count: int) -> tuple[int, ...]:
    if len(ids) < count:
        raise SystemExit(f"the prompt text has {len(ids)} tokens, fewer than --prompt-tokens {count}")
    return tuple(int(i) for i in ids[:count])


def gguf_bytes_per_token(gguf_file: str) -> int:
    """Tensor bytes a decode step reads: all but the token embedding, which is only gathered from,
    unless the output projection is tied to it (no ``output.weight``), when it is read whole."""
    from gguf import GGUFReader

    sizes = {tensor.name: int(tensor.n_bytes) for tensor in GGUFReader(gguf_file).tensors}
    tied = "output.weight" not in sizes
    return sum(size for name, size in sizes.items() if name != "token_embd.weight" or tied)


def onnx_bytes_per_token(model: Path) -> int:
    import onnx
    from edgegate.variants.graph_passes import weight_bytes_per_token

    return weight_bytes_per_token(onnx.load(str(model)))


def measure_bandwidth(threads: int, times: int = 3) -> float:
    """The best of a few readings: other work only ever lowers one (seen: 24.6 to 31.8 GB/s on
    one VM within minutes), and the ceiling is what the memory can do."""
    from edgegate.runner.measure import bandwidth

    return max(float(next(bandwidth({"threads": threads, "mb": 256}))["value"]) for _ in range(times))


def spawn(engine: Engine) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", json.dumps(asdict(engine))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{engine.name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(engine: Engine) -> dict[str, Any]:
    started = time.perf_counter()
    runner = LlamaCppRunner(engine) if engine.kind == "llama_cpp" else OnnxRunner(engine)
    load_s = time.perf_counter() - started
    generate(runner, engine)  # warm-up pass
    result = generate(runner, engine)
    return {"load_s": load_s, **result, "peak_rss_mb": peak_rss_mb()}


def generate(runner: Any, engine: Engine) -> dict[str, Any]:
    import numpy as np

    begin = time.perf_counter()
    logits = runner.prefill(list(engine.prompt_ids))
    prefill_s = time.perf_counter() - begin
    token = int(np.argmax(logits))
    first_token_s = time.perf_counter() - begin
    tokens, steps = [token], []
    for _ in range(engine.decode_tokens):
        step_begin = time.perf_counter()
        token = int(np.argmax(runner.step(token)))
        steps.append(time.perf_counter() - step_begin)
        tokens.append(token)
    return {"prefill_s": prefill_s, "first_token_s": first_token_s, "decode_s": sum(steps), "tokens": tokens}


class LlamaCppRunner:
    """llama.cpp through llama-cpp-python's Llama.eval; logits of the last position only."""

    def __init__(self, engine: Engine) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(engine.model, n_threads=engine.threads, n_threads_batch=engine.threads,
                                   n_ctx=512, logits_all=False, verbose=False)
        self.vocab = self.llm.n_vocab()

    def prefill(self, ids: list[int]) -> Any:
        self.llm.reset()
        self.llm.eval(ids)
        return self._last_logits()

    def step(self, token: int) -> Any:
        self.llm.eval([token])
        return self._last_logits()

    def _last_logits(self) -> Any:
        import numpy as np

        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,))


class OnnxRunner:
    """The runner's own onnxruntime backend, the one the harness picks for this graph: ``step`` of
    ``OnnxRuntimeBackend``, or of ``KvBufferBackend`` (KV cache in place) for a fused_decoder graph."""

    def __init__(self, engine: Engine) -> None:
        from edgegate.runner.backends import BACKENDS

        self.backend = BACKENDS[engine.backend](engine.model, ["CPUExecutionProvider"], engine.threads)
        self.past: Any = None
        self.past_len = 0

    def prefill(self, ids: list[int]) -> Any:
        import numpy as np

        self.past = None  # the last pass's KV cache goes before this one's is made: one at a time, as llama.cpp's
        logits, self.past, _ = self.backend.step(np.asarray([ids], dtype=np.int64), self.backend.empty_past(), 0)
        self.past_len = len(ids)
        return np.array(logits[0, -1])  # a copy: the prompt's logits (every position) are freed

    def step(self, token: int) -> Any:
        import numpy as np

        logits, self.past, _ = self.backend.step(np.asarray([[token]], dtype=np.int64), self.past, self.past_len)
        self.past_len += 1
        return logits[0, -1]


def measure_accuracy(args: argparse.Namespace, engines: list[Engine]) -> dict[str, dict[str, float]]:
    """Perplexity ratio and top-1 agreement of each engine against the suite's reference variant."""
    from edgegate.evaldata import tokenize
    from edgegate.suites import load_suite

    suite = load_suite(args.suite)
    reference = built_variant(suite, args.cache, suite.reference)
    if reference is None:
        print(f"accuracy skipped: the reference variant {suite.reference} is not built")
        return {}
    settings = suite.accuracy
    windows = tokenize(reference / "tokenizer.json", 1, settings.windows, settings.window_tokens).windows
    runs = {"reference": (str(reference / "model.onnx"), runner_backend(reference))}
    runs.update({e.name: (e.model, "llama_cpp" if e.kind == "llama_cpp" else e.backend) for e in engines})
    scored = {}
    for name, (model, backend) in runs.items():
        job = {"model": model, "backend": backend, "threads": args.threads, "windows": [list(w) for w in windows]}
        done = subprocess.run([sys.executable, __file__, "--accuracy-child", json.dumps(job)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"accuracy of {name} failed:\n{done.stderr[-2000:]}")
        scored[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"accuracy: {len(windows)} windows of {settings.window_tokens} tokens against {suite.reference}")
    return {name: compare_to(scored[name], scored["reference"]) for name in runs if name != "reference"}


def accuracy_child(model: str, backend: str, threads: int, windows: list[list[int]]) -> dict[str, Any]:
    """Each prediction's negative log-likelihood and most likely token, window by window."""
    import numpy as np
    from edgegate.runner.accuracy import _window_logprobs
    from edgegate.runner.backends import BACKENDS

    runner = BACKENDS[backend](model, ["CPUExecutionProvider"], threads)
    nll, top = [], []
    for window in windows:
        logprobs, targets = _window_logprobs(runner, window)
        nll += (-np.take_along_axis(logprobs, targets[:, None], axis=1)[:, 0]).astype(float).tolist()
        top += np.argmax(logprobs, axis=1).astype(int).tolist()
    return {"nll": nll, "top": top}


def compare_to(scored: dict[str, list], reference: dict[str, list]) -> dict[str, float]:
    import numpy as np

    ratio = float(np.exp(np.mean(scored["nll"]) - np.mean(reference["nll"])))
    return {"perplexity_ratio": ratio, "top1": float(np.mean(np.equal(scored["top"], reference["top"])))}


def peak_rss_mb() -> float | None:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return None


def print_table(engines: list[Engine], results: dict[str, list[dict[str, Any]]], bandwidth_gbs: float,
                accuracy: dict[str, dict[str, float]]) -> None:
    reference = engines[0]
    rows = {engine.name: summarize(engine, results[engine.name], bandwidth_gbs) for engine in engines}
    print(f"\nmedians of {len(results[reference.name])} rounds; read bandwidth {bandwidth_gbs:.1f} GB/s (runner's bandwidth())")
    header = ["engine", "prefill tok/s", "first token ms", "decode tok/s", "peak RSS MB", "load s",
              "MB read/token", "ceiling tok/s", "% of ceiling", "decode x llama.cpp", "greedy = llama.cpp",
              "ppl x fp32", "top-1 vs fp32"]
    print(" | ".join(header))
    for engine in engines:
        row = rows[engine.name]
        ratio = row["decode_tok_s"] / rows[reference.name]["decode_tok_s"]
        agree = greedy_agreement(results[engine.name][0]["tokens"], results[reference.name][0]["tokens"])
        scores = accuracy.get(engine.name)
        quality = [f"{scores['perplexity_ratio']:.3f}", f"{scores['top1']:.3f}"] if scores else ["-", "-"]
        print(" | ".join([engine.name, f"{row['prefill_tok_s']:.0f}", f"{row['first_token_ms']:.1f}",
                          f"{row['decode_tok_s']:.1f}", f"{row['peak_rss_mb']:.0f}", f"{row['load_s']:.2f}",
                          f"{engine.weight_bytes_per_token / 1e6:.1f}", f"{row['ceiling_tok_s']:.0f}",
                          f"{row['decode_tok_s'] / row['ceiling_tok_s']:.0%}", f"{ratio:.2f}", agree, *quality]))
    for engine in engines:  # contention from other work shows as one slow round
        rounds = ", ".join(f"{engine.decode_tokens / run['decode_s']:.1f}" for run in results[engine.name])
        print(f"{engine.name} decode tok/s by round: {rounds}")
    for engine in engines[1:]:
        prefill = rows[engine.name]["prefill_tok_s"] / rows[reference.name]["prefill_tok_s"]
        print(f"{engine.name} / llama.cpp: decode {rows[engine.name]['decode_tok_s'] / rows[reference.name]['decode_tok_s']:.2f}x, "
              f"prefill {prefill:.2f}x, first token {rows[engine.name]['first_token_ms'] / rows[reference.name]['first_token_ms']:.2f}x the time")


def summarize(engine: Engine, runs: list[dict[str, Any]], bandwidth_gbs: float) -> dict[str, float]:
    def median(field: str) -> float:
        return statistics.median(float(run[field]) for run in runs)

    return {
        "prefill_tok_s": len(engine.prompt_ids) / median("prefill_s"),
        "first_token_ms": median("first_token_s") * 1e3,
        "decode_tok_s": statistics.median(engine.decode_tokens / run["decode_s"] for run in runs),
        "peak_rss_mb": median("peak_rss_mb"),
        "load_s": median("load_s"),
        "ceiling_tok_s": bandwidth_gbs * 1e9 / engine.weight_bytes_per_token,
    }


def greedy_agreement(tokens: list[int], reference: list[int]) -> str:
    """How many leading greedy tokens match the reference's (the same until the first difference)."""
    same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    return f"first {same}/{len(reference)}"


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{value:.2f}" for value in load)


if __name__ == "__main__":
    main()

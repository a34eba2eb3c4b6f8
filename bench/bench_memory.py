"""Where the resident memory of a decode goes: llama.cpp on the GGUF against the suite's ONNX variants.

    python bench/bench_memory.py [--suite suites/suite_smollm2.yaml] [--variants int8,q4_1]
                                 [--threads 2] [--inline]

Each engine runs in a fresh process: import the runtime, load the model, prefill a 128-token
prompt, decode 64 tokens (the shape of bench_llamacpp.py's pass). At each stage the process's
/proc/self/status gives VmRSS split into anonymous memory (heap, arenas, prepacked weights, the
KV cache) and file-backed pages (libraries, mapped weights), and VmHWM, the peak so far.

For an ONNX model the table beside it splits the weights by what reads them: MatMulNBits codes,
their scales and zero points (onnxruntime prepacks these into buffers of its own and drops the
codes it packed), per-block offsets (the GGUF import's Q4_1/Q4_K minimums), tables only gathered
from (an embedding: mapped, only the gathered rows are read), the rest; and the two buffers a
decode needs whatever the engine: the KV cache (the runner's in-place buffer: 512 positions, fp32)
and the prefill's logits (every prompt position's, as the graph computes them). ``--inline``
adds each ONNX variant re-saved with its weights inside model.onnx, to show what mapping saves.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llamacpp import PROMPT_TEXT, built_variant, onnx_prompt_ids, runner_backend  # noqa: E402

STAGES = ("import", "load", "prefill", "decode")


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    from edgegate.suites import load_suite
    from edgegate.variants import base_models

    suite = load_suite(args.suite)
    located = base_models.locate(suite.base_model)
    jobs = [("llama.cpp", str(located.folder / located.gguf_file), "llama_cpp")]
    with tempfile.TemporaryDirectory() as scratch:
        for name in filter(None, args.variants.split(",")):
            folder = built_variant(suite, args.cache, name)
            if folder is not None:
                jobs.append((name, str(folder / "model.onnx"), runner_backend(folder)))
                if args.inline:
                    jobs.append((f"{name} (inline)", str(inline_copy(folder, Path(scratch) / name)), runner_backend(folder)))
        ids = list(onnx_prompt_ids(Path(jobs[1][1]).parent / "tokenizer.json", 128)) if len(jobs) > 1 else []
        rows = [(name, spawn({"model": model, "backend": backend, "threads": args.threads, "ids": ids}))
                for name, model, backend in jobs]
    print_stages(rows)
    for name, row in rows:
        if row.get("weights"):
            print_weights(name, row)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path(__file__).resolve().parent.parent / "suites" / "suite_smollm2.yaml")
    parser.add_argument("--variants", default="int8,q4_1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inline", action="store_true", help="also each ONNX variant with its weights inline")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgegate")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def inline_copy(folder: Path, out: Path) -> Path:
    import shutil

    import onnx

    out.mkdir(parents=True)
    for extra in ("genai_config.json", "tokenizer.json"):
        shutil.copy(folder / extra, out / extra)
    onnx.save_model(onnx.load(str(folder / "model.onnx")), str(out / "model.onnx"), save_as_external_data=False)
    return out / "model.onnx"


def spawn(job: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{job['model']} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def status_mb() -> dict[str, float]:
    keys = {"VmRSS", "VmHWM", "RssAnon", "RssFile"}
    with open("/proc/self/status", encoding="ascii") as status:
        fields = (line.split(":", 1) for line in status)
        return {key: int(value.split()[0]) * 1024 / 1e6 for key, value in fields if key in keys}  # kB -> MB


def child(model: str, backend: str, threads: int, ids: list[int]) -> dict[str, Any]:
    import numpy as np

    from edgegate.runner.backends import BACKENDS

    if not ids:  # llama.cpp alone: its own tokenizer
        import llama_cpp

        ids = llama_cpp.Llama(model, vocab_only=True, verbose=False).tokenize(PROMPT_TEXT.encode(), add_bos=False)[:128]
    stages = {"import": status_mb()}
    runner = BACKENDS[backend](model, ["CPUExecutionProvider"], threads)
    stages["load"] = status_mb()
    logits, past, _ = runner.step(np.asarray([ids], dtype=np.int64), runner.empty_past(), 0)
    logits_bytes = int(np.asarray(logits).nbytes)
    token = int(np.argmax(np.asarray(logits)[0, -1]))
    del logits
    stages["prefill"] = status_mb()
    for position in range(len(ids), len(ids) + 64):
        logits, past, _ = runner.step(np.asarray([[token]], dtype=np.int64), past, position)
        token = int(np.argmax(np.asarray(logits)[0, -1]))
    stages["decode"] = status_mb()
    kv = sum(int(a.nbytes) for a in getattr(past, "arrays", {}).values())
    weights = weight_roles(model) if model.endswith(".onnx") else {}
    files = [Path(model), Path(model + ".data")]
    file_bytes = sum(path.stat().st_size for path in files if path.exists())
    return {"stages": stages, "kv_bytes": kv, "logits_bytes": logits_bytes, "weights": weights, "file_bytes": file_bytes}


def weight_roles(model: str) -> dict[str, int]:
    """Initializer bytes by what reads them."""
    import numpy as np
    import onnx

    graph = onnx.load(model, load_external_data=False).graph
    roles: dict[str, str] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            role = role_of(node, position)
            if role and name not in roles:
                roles[name] = role
    sizes: Counter[str] = Counter()
    for init in graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        size = count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        sizes[roles.get(init.name, "other")] += size
    return dict(sizes)


def role_of(node: Any, position: int) -> str | None:
    if node.op_type == "MatMulNBits":
        return {1: "MatMulNBits codes", 2: "MatMulNBits scales", 3: "MatMulNBits zero points"}.get(position)
    if node.op_type.startswith("Gather") and node.domain in ("", "com.microsoft"):
        return "gathered tables" if position != 1 else None
    if node.name.endswith("/OffsetMatMul") and position == 1:
        return "block offsets (MatMul)"
    return None


def print_stages(rows: list[tuple[str, dict[str, Any]]]) -> None:
    print("engine | " + " | ".join(f"{stage} RSS (anon + file)" for stage in STAGES) + " | peak RSS MB | KV MB | logits MB")
    for name, row in rows:
        cells = [f"{s['VmRSS']:.0f} ({s['RssAnon']:.0f} + {s['RssFile']:.0f})" for s in (row["stages"][k] for k in STAGES)]
        print(" | ".join([name, *cells, f"{row['stages']['decode']['VmHWM']:.0f}", f"{row['kv_bytes'] / 1e6:.1f}",
                          f"{row['logits_bytes'] / 1e6:.1f}"]))
    print("(llama.cpp's KV cache is its context's own: f16, 1,024 positions, not counted here)")


def print_weights(name: str, row: dict[str, Any]) -> None:
    stages = row["stages"]
    loaded = stages["load"]["RssAnon"] - stages["import"]["RssAnon"]
    parts = ", ".join(f"{role} {size / 1e6:.1f}" for role, size in sorted(row["weights"].items(), key=lambda kv: -kv[1]))
    print(f"{name}: weights MB: {parts}; total {sum(row['weights'].values()) / 1e6:.1f}; "
          f"anonymous memory the load added: {loaded:.0f} MB")
    peak, base = stages["decode"]["VmHWM"], stages["import"]["VmRSS"]
    files, kv, logits = row["file_bytes"] / 1e6, row["kv_bytes"] / 1e6, row["logits_bytes"] / 1e6
    print(f"{name}: peak {peak:.0f} MB = model files {files:.0f} + KV cache {kv:.0f} + interpreter and libraries "
          f"{base:.0f} + the rest {peak - files - kv - base:.0f} (of which the prefill's logits {logits:.0f})")


if __name__ == "__main__":
    main()

"""Side-by-side decode against the baseline's own build, for a regression test that noise can't fool.

Between two nights, the same build's decode median on a shared 2-core runner moves by up to
30% (bench/bench_gate.py), so a night-to-night limit must be loose. When tonight's build of a
variant differs from the baseline run's (a recipe, a tool or the base model changed), the
baseline's artifact is still in the content-addressed cache: it is staged next to tonight's and
the runner decodes with both in one process, interleaving their steps one by one, so both see
the same machine. The
ratio of the two (``decode_vs_baseline``) is then judged tightly (+3% by default).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from .baselines import BaselineChoice
from .regression import DEFAULT_RULES
from .store import HistoryStore
from .suites import Suite
from .transport import Transport
from .variants.cache import read_manifest
from .variants.factory import Artifact

ROUNDS = 12  # rounds, one ratio each; the Wilcoxon test's smallest one-sided p is then 1/4096
TOKENS = 16  # interleaved steps per round and build: 12 x 2 x 16 steps, about 15 s for SmolLM2 on two cores
WARMUP = 1
REOPEN_EVERY = 6  # rounds between opening both sessions anew, the other first each time (see the runner)


def plan(store: HistoryStore, cache_root: Path, choice: BaselineChoice | None, suite: Suite, variant: str,
         artifact: Artifact) -> tuple[Path, dict[str, str]] | str:
    """The baseline build's folder and file hashes, or why it cannot be measured side by side."""
    if choice is None:
        return "no baseline run"
    rows = store.frame("artifacts", choice.run_id, where={"suite": suite.name, "variant": variant})
    if rows.empty:
        return f"baseline run {choice.run_id} recorded no build of {variant}"
    recipe, key = str(rows.recipe.iloc[-1]), str(rows.key.iloc[-1])
    if key == artifact.key:
        return f"same build as baseline run {choice.run_id} ({key[:16]}): nothing to compare side by side"
    folder = cache_root / "variants" / f"{recipe}-{key[:16]}"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"baseline build {recipe}-{key[:16]} is not in the cache {cache_root}"
    hashes = {name: facts["sha256"] for name, facts in manifest["files"].items() if name != "tokenizer.json"}
    return folder, hashes


def measurement(transport: Transport, planned: tuple[Path, dict[str, str]], decode: dict[str, Any],
                choice: BaselineChoice) -> dict[str, Any]:
    """The runner's ``paired_decode`` entry: stage the baseline build, decode like ``decode`` does."""
    folder, hashes = planned
    remote = PurePosixPath(transport.stage(folder, hashes), "model.onnx")
    return {"baseline_model": str(remote), "baseline_label": f"the build of baseline run {choice.run_id}",
            "prompt_ids": decode["prompt_ids"], "tokens": min(TOKENS, decode["tokens"]), "warmup": WARMUP,
            "rounds": ROUNDS, "reopen_every": REOPEN_EVERY}


def same_build_spread(store: HistoryStore, suite: str, device: str, variant: str, key: str,
                      metric: str = "decode_ms") -> tuple[int, float, float] | None:
    """(runs, lowest, highest) of ``metric``'s median over the clean runs that measured this very
    build on this device: how far the environment alone moved it, night to night. None below 2 runs."""
    builds = store.frame("artifacts", where={"suite": suite, "variant": variant, "key": key})
    results = store.frame("results", where={"suite": suite, "device": device, "variant": variant, "metric": metric})
    clean = results[results.run_id.isin(set(builds.run_id)) & results.disturbed.isna()].dropna(subset=["value"])
    medians = clean.drop_duplicates("run_id", keep="last").value
    if len(medians) < 2:
        return None
    return len(medians), float(medians.min()), float(medians.max())


def add_to_job(job: dict[str, Any], store: HistoryStore, cache_root: Path, choice: BaselineChoice | None,
               suite: Suite, device: str, variant: str, artifact: Artifact, transport: Transport
               ) -> tuple[str, str] | None:
    """Decode side by side with the baseline run's build when it differs from tonight's: the job's
    ``paired_decode`` entry. Returns why decode is not paired, short and with what night to night
    can see instead (None when it is paired, or when the suite does not ask for it)."""
    measurements = job["measurements"]
    if "decode" not in measurements or "decode_vs_baseline" not in (suite.regressions or DEFAULT_RULES):
        return None
    planned = plan(store, cache_root, choice, suite, variant, artifact)
    if isinstance(planned, str):
        return planned, night_to_night(planned, store, suite, device, variant, artifact)
    assert choice is not None
    measurements["paired_decode"] = measurement(transport, planned, measurements["decode"], choice)
    return None


def night_to_night(why: str, store: HistoryStore, suite: Suite, device: str, variant: str, artifact: Artifact) -> str:
    """Why decode is not paired and, for the same build, what a night-to-night rule can see here."""
    spread = same_build_spread(store, suite.name, device, variant, artifact.key)
    if spread is None or not why.startswith("same build"):
        return why
    runs, low, high = spread
    rule = (suite.regressions or DEFAULT_RULES).get("decode_ms")
    limit = f"its rule's +{rule.max_change:.0%}" if rule else "a rule (decode_ms has none)"
    return (f"{why}. Over {runs} clean runs of this build on {device}, its decode median moved between "
            f"{low:.3g} and {high:.3g} ms ({high / low - 1:+.1%}) with nothing changed but the environment: "
            f"a change of the device or its software is seen night to night only beyond that and beyond {limit}")

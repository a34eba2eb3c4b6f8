"""The metrics EdgeGate measures: unit, which direction is better, what the number means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["lower", "higher"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    unit: str
    better: Direction
    label: str


_CATALOG = (
    MetricInfo("size_mb", "MB", "lower", "model file size"),
    MetricInfo("load_ms", "ms", "lower", "time to create the inference session"),
    MetricInfo("load_rss_mb", "MB", "lower", "resident memory added by loading the model"),
    MetricInfo("peak_rss_mb", "MB", "lower", "peak resident memory of the measuring process"),
    MetricInfo("prefill_ms", "ms", "lower", "latency of one prefill of the prompt (median)"),
    MetricInfo("prefill_tok_s", "tok/s", "higher", "prompt tokens per second in prefill"),
    MetricInfo("decode_ms", "ms", "lower", "latency of one decode step with KV cache (median)"),
    MetricInfo("decode_tok_s", "tok/s", "higher", "generated tokens per second in decode"),
    MetricInfo("decode_vs_baseline", "x", "lower",
               "decode step time over the baseline build's, both measured in alternation in one process (median)"),
    MetricInfo("perplexity", "", "lower", "perplexity on the suite's evaluation text"),
    MetricInfo("kl_mean", "nats", "lower", "mean KL divergence of next-token distributions vs the reference"),
    MetricInfo("kl_max", "nats", "lower", "largest per-position KL divergence vs the reference"),
    MetricInfo("top1_agreement", "", "higher", "share of positions whose top token matches the reference"),
    MetricInfo("embed_ms", "ms", "lower", "latency of embedding one batch of sentences (median)"),
    MetricInfo("sentences_per_s", "sent/s", "higher", "sentences embedded per second, in batches"),
    MetricInfo("cosine_mean", "", "higher", "mean cosine similarity of sentence embeddings to the reference's"),
    MetricInfo("cosine_min", "", "higher", "lowest cosine similarity of one sentence's embedding to the reference's"),
    MetricInfo("rank_spearman", "", "higher", "Spearman correlation of pair similarities with the reference's"),
    MetricInfo("gold_spearman", "", "higher", "Spearman correlation of pair similarities with the set's graded scores"),
    MetricInfo("embed_contention", "share", "lower", "CPU share used by other processes while timing embedding"),
    MetricInfo("infer_ms", "ms", "lower", "latency of one run of a generic model on its inputs (median)"),
    MetricInfo("infer_per_s", "items/s", "higher", "items (the inputs' leading dimension) inferred per second"),
    MetricInfo("output_cosine_min", "", "higher",
               "lowest cosine similarity of one item's output to the reference's, over every output"),
    MetricInfo("output_top1_agreement", "", "higher",
               "share of items whose top class matches the reference's (outputs shaped [N, C], C > 1; the lowest)"),
    MetricInfo("output_max_abs_diff", "", "lower", "largest absolute difference of an output value from the reference's"),
    MetricInfo("output_max_rel_diff", "", "lower",
               "largest difference from the reference relative to its magnitude (floored at 1e-3 of the output's largest)"),
    MetricInfo("energy_per_infer_j", "J", "lower", "energy per run of a generic model on its inputs"),
    MetricInfo("infer_contention", "share", "lower", "CPU share used by other processes while timing inference"),
    MetricInfo("ttft_ms", "ms", "lower", "time to first token: prefill call plus picking the token (median)"),
    MetricInfo("roofline_fraction", "", "higher", "decode tok/s as a share of the memory-bandwidth ceiling"),
    MetricInfo("decode_ceiling_tok_s", "tok/s", "higher", "memory bandwidth / weight bytes read per token"),
    MetricInfo("weights_mb_per_token", "MB", "lower", "weight bytes read per generated token (embedding rows excluded)"),
    MetricInfo("memory_bandwidth_gbs", "GB/s", "higher", "device read bandwidth (measured, threaded)"),
    MetricInfo("power_w", "W", "lower", "average power during decode"),
    MetricInfo("power_peak_w", "W", "lower", "peak power during decode"),
    MetricInfo("power_idle_w", "W", "lower", "average power while idle, before loading"),
    MetricInfo("energy_per_token_j", "J", "lower", "energy per generated token"),
    MetricInfo("energy_per_prefill_j", "J", "lower", "energy per prefill of the prompt (one inference)"),
    MetricInfo("prefill_contention", "share", "lower", "CPU share used by other processes while timing prefill"),
    MetricInfo("decode_contention", "share", "lower", "CPU share used by other processes while timing decode"),
    MetricInfo("temp_max_c", "C", "lower", "hottest thermal zone after measuring"),
    MetricInfo("thermal_warnings", "", "lower", "trip points crossed or clocks dropped while measuring"),
)

METRICS: dict[str, MetricInfo] = {info.name: info for info in _CATALOG}
# What each kind of suite measures (``BaseModelSpec.task``); a device profile's limit on a metric
# its suite does not measure does not apply to that suite.
_ENCODER_ONLY = frozenset({"embed_ms", "sentences_per_s", "cosine_mean", "cosine_min", "rank_spearman",
                           "gold_spearman", "embed_contention"})
_GENERIC_ONLY = frozenset({"infer_ms", "infer_per_s", "output_cosine_min", "output_top1_agreement",
                           "output_max_abs_diff", "output_max_rel_diff", "energy_per_infer_j", "infer_contention"})
_DECODER_ONLY = frozenset({"prefill_ms", "prefill_tok_s", "decode_ms", "decode_tok_s", "decode_vs_baseline",
                           "perplexity", "kl_mean", "kl_max", "top1_agreement", "ttft_ms", "roofline_fraction",
                           "decode_ceiling_tok_s", "weights_mb_per_token", "memory_bandwidth_gbs",
                           "energy_per_token_j", "energy_per_prefill_j", "prefill_contention", "decode_contention"})
TASK_METRICS: dict[str, frozenset[str]] = {
    "causal_lm": frozenset(METRICS) - _ENCODER_ONLY - _GENERIC_ONLY,
    "sentence_embedding": frozenset(METRICS) - _DECODER_ONLY - _GENERIC_ONLY,
    "generic": frozenset(METRICS) - _DECODER_ONLY - _ENCODER_ONLY,
}
REPORT_ORDER: tuple[str, ...] = tuple(info.name for info in _CATALOG)


def metric_info(name: str) -> MetricInfo:
    """The catalog entry for ``name``; KeyError names the known metrics."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None

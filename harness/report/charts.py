"""Charts for the HTML report as inline SVG strings: no scripts, fonts or network, every label escaped.

Each function is pure: numbers in, one ``Markup`` SVG out (a fixed 640x360 viewBox that scales with the
page). Every data point carries a ``<title>`` so hovering it names the variant and the value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 360
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 70, 620, 40, 310
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def num(value: float) -> str:
    """A short label for a number (ticks, tooltips)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    if abs(value) >= 0.01:
        return f"{value:.3g}"
    return f"{value:.1e}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]; the first and last are the axis ends."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step + 1e-9) * step
    stop = math.ceil(high / step - 1e-9) * step
    n = round((stop - start) / step)
    return [round(start + i * step, 12) for i in range(n + 1)]


class Scale:
    """Linear map from a data domain onto pixel range."""

    def __init__(self, ticks: Sequence[float], pixel_low: float, pixel_high: float) -> None:
        self.ticks = list(ticks)
        self.low, self.high = self.ticks[0], self.ticks[-1]
        self.pixel_low, self.pixel_high = pixel_low, pixel_high

    def __call__(self, value: float) -> float:
        share = (value - self.low) / (self.high - self.low)
        return round(self.pixel_low + share * (self.pixel_high - self.pixel_low), 2)


def _open(title: str, caption: str = "", css_class: str = "chart") -> list[str]:
    parts = [(f'<svg class="{escape(css_class)}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
              f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
              'font-family="system-ui, sans-serif" font-size="11">'),
             f"<title>{escape(title)}</title>",
             '<rect width="100%" height="100%" fill="#fff"/>',
             f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14" font-weight="600">{escape(title)}</text>']
    if caption:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle" fill="#555">{escape(caption)}</text>')
    return parts


def _close(parts: list[str]) -> Markup:
    parts.append("</svg>")
    return Markup("".join(parts))


def _x_axis(parts: list[str], scale: Scale, label: str, labels: Sequence[str] | None = None) -> None:
    parts.append(f'<line x1="{PLOT_LEFT}" y1="{PLOT_BOTTOM}" x2="{PLOT_RIGHT}" y2="{PLOT_BOTTOM}" stroke="#333"/>')
    for i, tick in enumerate(scale.ticks):
        x = scale(tick)
        text = labels[i] if labels is not None else num(tick)
        parts.append(f'<line x1="{x}" y1="{PLOT_TOP}" x2="{x}" y2="{PLOT_BOTTOM}" stroke="#eee"/>'
                     f'<line x1="{x}" y1="{PLOT_BOTTOM}" x2="{x}" y2="{PLOT_BOTTOM + 4}" stroke="#333"/>'
                     f'<text x="{x}" y="{PLOT_BOTTOM + 16}" text-anchor="middle">{escape(text)}</text>')
    parts.append(f'<text class="x-label" x="{(PLOT_LEFT + PLOT_RIGHT) / 2}" y="{PLOT_BOTTOM + 32}" '
                 f'text-anchor="middle">{escape(label)}</text>')


def _y_axis(parts: list[str], scale: Scale, label: str) -> None:
    parts.append(f'<line x1="{PLOT_LEFT}" y1="{PLOT_TOP}" x2="{PLOT_LEFT}" y2="{PLOT_BOTTOM}" stroke="#333"/>')
    for tick in scale.ticks:
        y = scale(tick)
        parts.append(f'<line x1="{PLOT_LEFT}" y1="{y}" x2="{PLOT_RIGHT}" y2="{y}" stroke="#eee"/>'
                     f'<text x="{PLOT_LEFT - 6}" y="{y + 4}" text-anchor="end">{escape(num(tick))}</text>')
    mid = (PLOT_TOP + PLOT_BOTTOM) / 2
    parts.append(f'<text class="y-label" x="16" y="{mid}" text-anchor="middle" '
                 f'transform="rotate(-90 16 {mid})">{escape(label)}</text>')


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _empty(title: str, why: str) -> Markup:
    parts = _open(title)
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#777">{escape(why)}</text>')
    return _close(parts)


def pareto(rows: Iterable[Mapping[str, Any]], title: str = "Latency vs accuracy") -> Markup:
    """Scatter of decode_ms (x) against perplexity (y), one circle per variant, area proportional to size_mb."""
    points = [r for r in rows if _finite(r.get("decode_ms")) and _finite(r.get("perplexity"))]
    if not points:
        return _empty(title, "no variant has both decode_ms and perplexity")
    xs = [float(r["decode_ms"]) for r in points]
    ys = [float(r["perplexity"]) for r in points]
    sizes = [float(r["size_mb"]) if _finite(r.get("size_mb")) and float(r["size_mb"]) > 0 else None for r in points]
    largest = max((s for s in sizes if s is not None), default=None)
    x_pad, y_pad = (max(xs) - min(xs)) * 0.08, (max(ys) - min(ys)) * 0.08  # room for circles and labels
    x_scale = Scale(nice_ticks(min(xs) - x_pad, max(xs) + x_pad), PLOT_LEFT, PLOT_RIGHT - 50)
    y_scale = Scale(nice_ticks(min(ys) - y_pad, max(ys) + y_pad), PLOT_BOTTOM, PLOT_TOP)
    parts = _open(title, "lower-left is better: faster and more accurate; circle area is proportional to model size")
    _x_axis(parts, x_scale, "decode latency (ms, median per step)")
    _y_axis(parts, y_scale, "perplexity")
    for i, (row, x, y, size) in enumerate(zip(points, xs, ys, sizes)):
        radius = 18 * math.sqrt(size / largest) if size is not None and largest else 5.0
        name = str(row.get("variant", ""))
        tip = f"{name}: decode {num(x)} ms, perplexity {num(y)}" + (f", {num(size)} MB" if size is not None else "")
        colour = PALETTE[i % len(PALETTE)]
        cx, cy = x_scale(x), y_scale(y)
        parts.append(f'<circle class="point" cx="{cx}" cy="{cy}" r="{max(radius, 2.0):.2f}" fill="{colour}" '
                     f'fill-opacity="0.45" stroke="{colour}"><title>{escape(tip)}</title></circle>'
                     f'<text class="point-label" x="{cx + max(radius, 2.0) + 3:.2f}" y="{cy + 4}">{escape(name)}</text>')
    return _close(parts)


def box_stats(samples: Sequence[float]) -> dict[str, Any]:
    """p5, q1, median, q3, p95 (linear interpolation) and the samples outside [p5, p95]."""
    values = np.asarray([float(s) for s in samples if _finite(s)], dtype=float)
    p5, q1, median, q3, p95 = np.percentile(values, [5, 25, 50, 75, 95])
    outliers = values[(values < p5) | (values > p95)]
    return {"p5": float(p5), "q1": float(q1), "median": float(median), "q3": float(q3), "p95": float(p95),
            "outliers": [float(v) for v in outliers], "n": int(values.size)}


def latency_distribution(samples_by_variant: Mapping[str, Sequence[float]],
                         title: str = "Decode latency distribution", unit: str = "ms") -> Markup:
    """One horizontal box plot per variant: whiskers p5..p95, box q1..q3, median line, outlier dots."""
    stats = {name: box_stats(s) for name, s in samples_by_variant.items()
             if sum(1 for v in s if _finite(v)) > 0}
    if not stats:
        return _empty(title, "no raw samples recorded")
    low = min(min(s["p5"], *s["outliers"]) if s["outliers"] else s["p5"] for s in stats.values())
    high = max(max(s["p95"], *s["outliers"]) if s["outliers"] else s["p95"] for s in stats.values())
    x_scale = Scale(nice_ticks(low, high), PLOT_LEFT + 60, PLOT_RIGHT)
    parts = _open(title, "box: q1 to q3, line: median, whiskers: p5 to p95, dots: samples outside them")
    _x_axis(parts, x_scale, f"decode step latency ({unit})")
    band = (PLOT_BOTTOM - PLOT_TOP) / len(stats)
    height = min(band * 0.6, 24)
    for i, (name, s) in enumerate(stats.items()):
        mid = round(PLOT_TOP + band * (i + 0.5), 2)
        top, bottom = round(mid - height / 2, 2), round(mid + height / 2, 2)
        colour = PALETTE[i % len(PALETTE)]
        tip = (f"{name}: n={s['n']}, p5 {num(s['p5'])}, q1 {num(s['q1'])}, median {num(s['median'])}, "
               f"q3 {num(s['q3'])}, p95 {num(s['p95'])} {unit}")
        parts.append(f'<g class="box"><title>{escape(tip)}</title>'
                     f'<text x="{PLOT_LEFT + 54}" y="{mid + 4}" text-anchor="end">{escape(name)}</text>'
                     f'<line class="whisker" x1="{x_scale(s["p5"])}" y1="{mid}" x2="{x_scale(s["p95"])}" y2="{mid}" stroke="#333"/>'
                     f'<line x1="{x_scale(s["p5"])}" y1="{top}" x2="{x_scale(s["p5"])}" y2="{bottom}" stroke="#333"/>'
                     f'<line x1="{x_scale(s["p95"])}" y1="{top}" x2="{x_scale(s["p95"])}" y2="{bottom}" stroke="#333"/>'
                     f'<rect x="{x_scale(s["q1"])}" y="{top}" width="{max(x_scale(s["q3"]) - x_scale(s["q1"]), 0.5):.2f}" '
                     f'height="{bottom - top:.2f}" fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>'
                     f'<line class="median" x1="{x_scale(s["median"])}" y1="{top}" x2="{x_scale(s["median"])}" '
                     f'y2="{bottom}" stroke="#000" stroke-width="2"/>')
        for value in s["outliers"]:
            parts.append(f'<circle class="outlier" cx="{x_scale(value)}" cy="{mid}" r="2" fill="{colour}">'
                         f"<title>{escape(name)}: {escape(num(value))} {escape(unit)}</title></circle>")
        parts.append("</g>")
    return _close(parts)


def trend(history_points: Iterable[Mapping[str, Any]], baseline_run_id: str | Mapping[str, str | None] | None,
          title: str = "Trend", y_label: str = "value", runs: Sequence[str] | None = None) -> Markup:
    """A metric over runs, one line per variant (x: run order, y: value); the baseline run is marked.

    ``history_points``: dicts with run_id, variant and value, in run order (or ``runs`` gives the order).
    ``baseline_run_id``: one run id (a dashed vertical line) or variant -> run id (a ring on that point;
    a dashed line too when every variant shares the run).
    """
    points = [p for p in history_points if _finite(p.get("value"))]
    if not points:
        return _empty(title, "no history for this metric")
    order = list(runs) if runs is not None else list(dict.fromkeys(str(p["run_id"]) for p in points))
    position = {run: i for i, run in enumerate(order)}
    points = [p for p in points if str(p["run_id"]) in position]
    if not points:
        return _empty(title, "no history for this metric")
    if isinstance(baseline_run_id, Mapping):
        per_variant = {str(k): v for k, v in baseline_run_id.items() if v}
        shared = set(per_variant.values())
        line_run = next(iter(shared)) if len(shared) == 1 else None
    else:
        per_variant, line_run = {}, baseline_run_id
    values = [float(p["value"]) for p in points]
    x_ticks = [0.0, float(max(len(order) - 1, 1))]
    x_scale = Scale(x_ticks, PLOT_LEFT, PLOT_RIGHT - 90)
    y_scale = Scale(nice_ticks(min(values), max(values)), PLOT_BOTTOM, PLOT_TOP)
    parts = _open(title, f"last {len(order)} runs, oldest left; dashed line / ring: the baseline run")
    step = max(1, math.ceil(len(order) / 10))
    shown = [i for i in range(len(order)) if i % step == 0 or i == len(order) - 1]
    x_scale.ticks = [float(i) for i in shown]
    _x_axis(parts, x_scale, "run (oldest to newest)", labels=[str(i + 1) for i in shown])
    _y_axis(parts, y_scale, y_label)
    if line_run is not None and line_run in position:
        x = x_scale(position[line_run])
        parts.append(f'<line class="baseline" x1="{x}" y1="{PLOT_TOP}" x2="{x}" y2="{PLOT_BOTTOM}" stroke="#555" '
                     f'stroke-dasharray="5 4"><title>baseline run {escape(line_run)}</title></line>'
                     f'<text x="{x + 3}" y="{PLOT_TOP + 10}" fill="#555">baseline</text>')
    by_variant: dict[str, list[tuple[int, float, str]]] = {}
    for p in points:
        by_variant.setdefault(str(p["variant"]), []).append((position[str(p["run_id"])], float(p["value"]), str(p["run_id"])))
    for i, (name, series) in enumerate(by_variant.items()):
        series.sort()
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{x_scale(x)},{y_scale(y)}" for x, y, _ in series)
        parts.append(f'<g class="series"><polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y, run in series:
            parts.append(f'<circle cx="{x_scale(x)}" cy="{y_scale(y)}" r="2.5" fill="{colour}">'
                         f"<title>{escape(name)}, run {escape(run)}: {escape(num(y))}</title></circle>")
            if per_variant.get(name) == run:
                parts.append(f'<circle class="baseline-ring" cx="{x_scale(x)}" cy="{y_scale(y)}" r="6" fill="none" '
                             f'stroke="{colour}" stroke-width="1.5"><title>baseline of {escape(name)}: run '
                             f"{escape(run)}</title></circle>")
        last_x, last_y, _ = series[-1]
        parts.append(f'<text x="{x_scale(last_x) + 8}" y="{y_scale(last_y) + 4}" fill="{colour}">{escape(name)}</text></g>')
    return _close(parts)


def bars(values: Mapping[str, Any], label: str, title: str | None = None) -> Markup:
    """Horizontal bars per variant on a 0..1 axis (widened when a value exceeds 1)."""
    title = title or label
    data = {str(k): float(v) for k, v in values.items() if _finite(v)}
    if not data:
        return _empty(title, f"no {label} measured")
    top = max(1.0, max(data.values()))
    ticks = [0.0, 0.25, 0.5, 0.75, 1.0] if top <= 1.0 else nice_ticks(0.0, top)
    x_scale = Scale(ticks, PLOT_LEFT + 60, PLOT_RIGHT)
    parts = _open(title)
    _x_axis(parts, x_scale, label)
    band = (PLOT_BOTTOM - PLOT_TOP) / len(data)
    height = min(band * 0.7, 24)
    for i, (name, value) in enumerate(data.items()):
        mid = PLOT_TOP + band * (i + 0.5)
        x0, x1 = x_scale(0.0), x_scale(max(value, 0.0))
        parts.append(f'<g class="bar"><title>{escape(name)}: {escape(num(value))}</title>'
                     f'<text x="{PLOT_LEFT + 54}" y="{mid + 4:.2f}" text-anchor="end">{escape(name)}</text>'
                     f'<rect x="{x0}" y="{mid - height / 2:.2f}" width="{max(x1 - x0, 0.5):.2f}" height="{height:.2f}" '
                     f'fill="{PALETTE[i % len(PALETTE)]}" fill-opacity="0.7"/>'
                     f'<text x="{x1 + 4}" y="{mid + 4:.2f}">{escape(num(value))}</text></g>')
    return _close(parts)


def power_trace(watts: Sequence[float], title: str = "Power during decode") -> Markup:
    """Watts over sample index."""
    values = [float(w) for w in watts if _finite(w)]
    if not values:
        return _empty(title, "no power samples")
    x_scale = Scale(nice_ticks(0, max(len(values) - 1, 1)), PLOT_LEFT, PLOT_RIGHT)
    y_scale = Scale(nice_ticks(min(0.0, min(values)), max(values)), PLOT_BOTTOM, PLOT_TOP)
    parts = _open(title, f"{len(values)} samples, mean {num(sum(values) / len(values))} W")
    _x_axis(parts, x_scale, "sample")
    _y_axis(parts, y_scale, "power (W)")
    path = " ".join(f"{x_scale(i)},{y_scale(w)}" for i, w in enumerate(values))
    parts.append(f'<polyline class="power" points="{path}" fill="none" stroke="#d62728" stroke-width="1.5"/>')
    if len(values) <= 200:
        for i, w in enumerate(values):
            parts.append(f'<circle cx="{x_scale(i)}" cy="{y_scale(w)}" r="1.5" fill="#d62728">'
                         f"<title>sample {i}: {escape(num(w))} W</title></circle>")
    return _close(parts)


# The accuracy a runtime comparison plots, in order of preference: (point key, axis label, inverted).
ACCURACY_AXES = (
    ("top1_agreement", "top-1 agreement with the reference (higher is better)", False),
    ("perplexity_ratio", "reference perplexity / perplexity (higher is better)", True),
    ("perplexity", "perplexity (lower is better)", False),
)
RUNTIME_RADIUS = 22.0  # px: the largest variant's circle; every other circle's area scales with its size


def runtime_tradeoff(points: Iterable[Mapping[str, Any]], title: str = "Speed vs accuracy by runtime") -> Markup:
    """Decode tok/s (x) against accuracy (y): one circle per variant, coloured by runtime (legend),
    its AREA proportional to size_mb (never under 1.5 px radius; dashed at 5 px when unknown).

    One accuracy for every circle, so that they compare: top-1 agreement where every plotted variant
    has it, else reference perplexity / perplexity (higher is better, as top-1), else perplexity; the
    axis label says which, and the caption names any variant left out for lack of it.
    ``points``: dicts with variant, runtime, decode_tok_s, size_mb and the ACCURACY_AXES keys."""
    fast = [p for p in points if _finite(p.get("decode_tok_s"))]
    key, label, inverted = max(ACCURACY_AXES, key=lambda axis: sum(_finite(p.get(axis[0])) for p in fast))
    shown = [p for p in fast if _finite(p.get(key)) and (not inverted or float(p[key]) > 0)]
    if not shown:
        return _empty(title, "no variant has both a decode tok/s and an accuracy")
    ys = [1.0 / float(p[key]) if inverted else float(p[key]) for p in shown]
    xs = [float(p["decode_tok_s"]) for p in shown]
    x_pad, y_pad = (max(xs) - min(xs)) * 0.1, (max(ys) - min(ys)) * 0.1  # room for circles and labels
    x_scale = Scale(nice_ticks(min(xs) - x_pad, max(xs) + x_pad), PLOT_LEFT, PLOT_RIGHT - 50)
    y_scale = Scale(nice_ticks(min(ys) - y_pad, max(ys) + y_pad), PLOT_BOTTOM, PLOT_TOP)
    left_out = [str(p.get("variant", "")) for p in fast if p not in shown]
    parts = _open(title, "upper right is better: faster and more accurate; circle area is proportional to model size"
                  + (f"; no {key}: {', '.join(left_out)}" if left_out else ""))
    _x_axis(parts, x_scale, "decode speed (tok/s, higher is better)")
    _y_axis(parts, y_scale, label)
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(str(p.get("runtime", "")) for p in shown))}
    largest = max((float(p["size_mb"]) for p in shown if _finite(p.get("size_mb")) and float(p["size_mb"]) > 0),
                  default=None)
    for point, x, y in zip(shown, xs, ys):
        parts.append(_runtime_circle(point, x_scale(x), y_scale(y), colours, largest, f"{label.split(' (')[0]} {num(y)}"))
    _runtime_legend(parts, colours)
    return _close(parts)


def _runtime_circle(point: Mapping[str, Any], cx: float, cy: float, colours: Mapping[str, str],
                    largest: float | None, accuracy: str) -> str:
    """One variant's circle (area proportional to its size against the largest) and its name."""
    size = float(point["size_mb"]) if _finite(point.get("size_mb")) and float(point["size_mb"]) > 0 else None
    radius = max(RUNTIME_RADIUS * math.sqrt(size / largest), 1.5) if size is not None and largest else 5.0
    runtime, name = str(point.get("runtime", "")), str(point.get("variant", ""))
    tip = (f"{name} ({runtime}): {num(float(point['decode_tok_s']))} tok/s, {accuracy}, "
           + (f"{num(size)} MB" if size is not None else "size unknown"))
    colour = colours[runtime]
    dashed = "" if size is not None else ' stroke-dasharray="3 2"'
    return (f'<circle class="variant" data-runtime="{escape(runtime)}" cx="{cx}" cy="{cy}" r="{radius:.3f}" '
            f'fill="{colour}" fill-opacity="0.45" stroke="{colour}"{dashed}><title>{escape(tip)}</title></circle>'
            f'<text class="point-label" x="{cx + radius + 3:.2f}" y="{cy + 4}">{escape(name)}</text>')


def _runtime_legend(parts: list[str], colours: Mapping[str, str]) -> None:
    """Runtime -> colour, boxed in the plot's top-right corner."""
    left, top = PLOT_RIGHT - 120, PLOT_TOP + 4
    parts.append(f'<g class="legend"><rect x="{left}" y="{top}" width="118" height="{8 + 16 * len(colours)}" '
                 'fill="#fff" fill-opacity="0.85" stroke="#ccc"/>')
    for i, (runtime, colour) in enumerate(colours.items()):
        y = top + 12 + 16 * i
        parts.append(f'<circle cx="{left + 10}" cy="{y}" r="5" fill="{colour}" fill-opacity="0.45" stroke="{colour}"/>'
                     f'<text class="legend-label" x="{left + 20}" y="{y + 4}">{escape(runtime)}</text>')
    parts.append("</g>")

"""The report's runtime comparison: the runtime x precision table and the speed/accuracy chart.

Histories are real SQLite files written through HistoryStore; the report is rendered and its HTML read
back the way a browser lays it out (header positions, not just attributes)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from edgegate.report import charts, render_run
from edgegate.store import HistoryStore, RunInfo

SUITE, DEVICE = "chat", "pixel8"
NO_LOGITS = "unavailable: LiteRT-LM gives no logits (text only)"
# variant -> (manifest, decode tok/s, perplexity, top-1 (None: unavailable), size MB, passed)
VARIANTS: dict[str, tuple[dict[str, Any], float, float, float | None, float, bool]] = {
    # an old manifest: no runtime (onnxruntime), no precision (the recipe's name says fp32); the reference
    "ort_fp32": ({"recipe": "export_fp32", "params": {}, "facts": {}}, 20.0, 8.0, None, 400.0, True),
    "ort_int8": ({"runtime": "onnxruntime", "facts": {"precision": "int8", "scheme": "dynamic per-tensor int8"}},
                 35.0, 8.4, 0.90, 100.0, True),
    "ort_int8_static": ({"runtime": "onnxruntime_kv_buffer", "facts": {"precision": "int8", "scheme": "static QDQ"}},
                        40.0, 8.6, 0.88, 100.0, True),
    # no facts.precision: the recipe's params say int4
    "ort_int4": ({"recipe": "fused_decoder", "params": {"precision": "int4"}, "facts": {}}, 55.0, 9.2, 0.80, 70.0, True),
    "litert_lm_int4": ({"runtime": "litert_lm", "facts": {"precision": "int4", "scheme": "int4 per-channel weights"}},
                       80.0, 9.0, None, 50.0, False),
    # no precision anywhere but the variant's name: ExecuTorch's 8da4w is 4-bit weights
    "executorch_8da4w": ({"runtime": "executorch", "recipe": "executorch_export", "params": {}, "facts": {}},
                         70.0, 8.9, 0.85, 60.0, True),
}


def _rows(variant: str, decode: float, perplexity: float, top1: float | None, size: float,
          reference: bool) -> list[dict[str, Any]]:
    row = {"run_id": "r1", "suite": SUITE, "device": DEVICE, "variant": variant}
    rows = [{**row, "metric": "decode_tok_s", "value": decode, "unit": "tok/s", "n": 5, "p50": decode, "p90": decode,
             "p99": decode, "ci_low": decode, "ci_high": decode},
            {**row, "metric": "perplexity", "value": perplexity, "unit": ""},
            {**row, "metric": "size_mb", "value": size, "unit": "MB"}]
    if reference:  # the reference is not compared with itself: no KL or top-1 rows
        return rows
    if top1 is None:
        return rows + [{**row, "metric": m, "value": None, "unit": u, "note": NO_LOGITS}
                       for m, u in (("kl_mean", "nats"), ("top1_agreement", ""))]
    return rows + [{**row, "metric": "kl_mean", "value": 0.05, "unit": "nats"},
                   {**row, "metric": "top1_agreement", "value": top1, "unit": ""}]


def make_history(tmp_path: Path, variants: dict[str, tuple] = VARIANTS, reference: str = "ort_fp32") -> HistoryStore:
    store = HistoryStore(tmp_path / "h.sqlite")
    store.start_run(RunInfo("r1", "2026-03-01T00:00:00Z", "abc", ("chat.yaml",), (DEVICE,), {}))
    for name, (manifest, decode, perplexity, top1, size, passed) in variants.items():
        store.append_results(_rows(name, decode, perplexity, top1, size, name == reference))
        store.append_artifact("r1", SUITE, name, manifest.get("recipe", "some_recipe"), f"key-{name}", manifest)
        store.append_verdict({"run_id": "r1", "time": "t", "suite": SUITE, "device": DEVICE, "variant": name,
                              "passed": passed, "breaches": [] if passed else ["decode_tok_s too low"]})
    settings = {f"{SUITE}/{DEVICE}/litert_lm_int4": {"runtime": "LiteRT-LM", "version": "0.7.0"},
                f"{SUITE}/{DEVICE}/ort_int8": {"runtime": "onnxruntime", "version": "1.20.1"}}
    store.finish_run("r1", "2026-03-01T00:10:00Z", 1, {"variants": settings})
    return store


class RuntimeTables(HTMLParser):
    """The runtimes tables as laid out: per device, the column headers, the row order and, per runtime
    and column header, the entries in that cell (variant, figure label -> text, all text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, Any]] = {}
        self.table: dict[str, Any] | None = None
        self.in_head = False
        self.header: list[str] | None = None  # the text of the <th> being read
        self.small = 0  # inside a <small> of a <th>: a version, not the runtime's name
        self.cell: list[dict[str, Any]] | None = None
        self.column = 0
        self.figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "table" and "runtimes" in classes:
            self.table = {"headers": [], "order": [], "grid": {}}
            self.tables[a["data-device"]] = self.table
        elif self.table is None:
            return
        elif tag in ("thead", "tbody"):
            self.in_head = tag == "thead"
        elif tag == "th":
            self.header = []
        elif tag == "small" and self.header is not None:
            self.small += 1
        elif tag == "td":
            self.cell, self.column = [], self.column + 1
        elif tag == "div" and self.cell is not None and "entry" in classes:
            self.cell.append({"variant": a["data-variant"], "figures": {}, "text": ""})
        elif tag == "span" and self.cell and "figure" in classes:
            self.figure = a["data-figure"]
            self.cell[-1]["figures"][self.figure] = ""

    def handle_endtag(self, tag: str) -> None:
        if self.table is None:
            return
        if tag == "small" and self.small:
            self.small -= 1
        elif tag == "th" and self.header is not None:
            self._header("".join(self.header).strip())
        elif tag == "td" and self.cell is not None:
            self.table["grid"][self.table["order"][-1]][self.table["headers"][self.column]] = self.cell
            self.cell = None
        elif tag == "span":
            self.figure = None
        elif tag == "table":
            self.table = None

    def _header(self, text: str) -> None:
        assert self.table is not None
        self.header = None
        if self.in_head:
            self.table["headers"].append(text)
        else:
            self.table["order"].append(text)
            self.table["grid"][text] = {}
            self.column = 0

    def handle_data(self, data: str) -> None:
        if self.header is not None and not self.small:
            self.header.append(data)
        if self.cell:
            self.cell[-1]["text"] += data
            if self.figure is not None:
                self.cell[-1]["figures"][self.figure] += data


def read_tables(html: str) -> dict[str, dict[str, Any]]:
    reader = RuntimeTables()
    reader.feed(html)
    return reader.tables


def names(cell: list[dict[str, Any]]) -> list[str]:
    return [entry["variant"] for entry in cell]


def entry(table: dict[str, Any], variant: str) -> dict[str, Any]:
    found = [e for row in table["grid"].values() for cell in row.values() for e in cell if e["variant"] == variant]
    assert len(found) == 1, f"{variant} appears {len(found)} times"
    return found[0]


def render(tmp_path: Path, store: HistoryStore) -> str:
    return render_run(store, "r1", tmp_path / "reports").read_text()


def test_table_puts_each_variant_under_its_runtime_and_precision(tmp_path: Path) -> None:
    html = render(tmp_path, make_history(tmp_path))
    assert '<h2 id="runtimes">Runtimes</h2>' in html
    table = read_tables(html)[DEVICE]
    assert table["headers"] == ["Runtime", "fp32", "fp16", "int8", "int4"]
    assert table["order"] == ["ONNX Runtime", "LiteRT-LM", "ExecuTorch"]
    grid = table["grid"]
    assert names(grid["ONNX Runtime"]["fp32"]) == ["ort_fp32"]
    assert names(grid["ONNX Runtime"]["int8"]) == ["ort_int8", "ort_int8_static"]  # two in one cell: both shown
    assert names(grid["ONNX Runtime"]["int4"]) == ["ort_int4"]
    assert names(grid["LiteRT-LM"]["int4"]) == ["litert_lm_int4"]
    assert names(grid["ExecuTorch"]["int4"]) == ["executorch_8da4w"]
    filled = {(r, p) for r, row in grid.items() for p, cell in row.items() if cell}
    assert filled == {("ONNX Runtime", "fp32"), ("ONNX Runtime", "int8"), ("ONNX Runtime", "int4"),
                      ("LiteRT-LM", "int4"), ("ExecuTorch", "int4")}


def test_cells_show_speed_accuracy_size_verdict_and_why_unavailable(tmp_path: Path) -> None:
    table = read_tables(render(tmp_path, make_history(tmp_path)))[DEVICE]
    lm = entry(table, "litert_lm_int4")
    assert lm["figures"]["top-1"].startswith("top-1: unavailable")
    assert "(LiteRT-LM gives no logits (text only))" in lm["figures"]["top-1"]
    assert lm["figures"]["decode"] == "decode: 80 tok/s" and lm["figures"]["size"] == "size: 50 MB"
    assert "blocked" in lm["text"] and "int4 per-channel weights" in lm["text"]
    int8 = entry(table, "ort_int8")
    assert int8["figures"]["perplexity"] == "perplexity: ×1.050 of the reference (8.4)"
    assert int8["figures"]["top-1"] == "top-1: 0.900"
    assert "ship" in int8["text"] and "dynamic per-tensor int8" in int8["text"]
    reference = entry(table, "ort_fp32")
    assert reference["figures"]["perplexity"] == "perplexity: 8 (the reference)"
    assert reference["figures"]["top-1"] == "top-1: the reference"


def test_runtime_versions_from_settings_are_shown(tmp_path: Path) -> None:
    html = render(tmp_path, make_history(tmp_path))
    assert re.search(r'<th class="name runtime">LiteRT-LM<br><small class="version">0\.7\.0</small></th>', html)
    assert re.search(r'<th class="name runtime">ONNX Runtime<br><small class="version">1\.20\.1</small></th>', html)


def _circles(svg: str) -> list[tuple[str, float, str]]:
    """(runtime, radius, tooltip) of each variant circle."""
    found = re.findall(r'<circle class="variant" data-runtime="([^"]*)"[^>]* r="([0-9.]+)"[^>]*><title>([^<]*)</title>',
                       svg)
    return [(runtime, float(r), tip) for runtime, r, tip in found]


def test_chart_areas_follow_sizes_and_the_axis_says_which_accuracy(tmp_path: Path) -> None:
    html = render(tmp_path, make_history(tmp_path))
    section = html[html.index('<h2 id="runtimes">'):html.index('<h2 id="charts">')]
    svg = section[section.index("<svg"):section.index("</svg>")]
    circles = _circles(svg)
    assert len(circles) == len(VARIANTS)
    sizes = {name: spec[4] for name, spec in VARIANTS.items()}
    areas = {tip.split(" (")[0]: radius ** 2 for _, radius, tip in circles}
    assert set(areas) == set(VARIANTS)
    per_mb = areas["ort_fp32"] / sizes["ort_fp32"]
    for name, area in areas.items():  # area / size the same for every variant
        assert abs(area / sizes[name] - per_mb) < 1e-3 * per_mb, name
    assert {runtime for runtime, _, _ in circles} == {"ONNX Runtime", "LiteRT-LM", "ExecuTorch"}
    # LiteRT-LM has no top-1, so every circle plots the perplexity ratio, inverted, and the label says so
    assert "reference perplexity / perplexity (higher is better)" in svg
    assert "top-1 agreement" not in svg
    legend = re.findall(r'<text class="legend-label"[^>]*>([^<]*)</text>', svg)
    assert legend == ["ONNX Runtime", "LiteRT-LM", "ExecuTorch"]


def test_chart_uses_top1_when_every_variant_has_it() -> None:
    points = [{"variant": "a", "runtime": "LiteRT", "decode_tok_s": 10.0, "size_mb": 100.0, "top1_agreement": 0.9},
              {"variant": "b", "runtime": "llama.cpp", "decode_tok_s": 30.0, "size_mb": 25.0, "top1_agreement": 0.7,
               "perplexity_ratio": 1.2}]
    svg = str(charts.runtime_tradeoff(points))
    assert "top-1 agreement with the reference (higher is better)" in svg
    circles = _circles(svg)
    assert abs((circles[0][1] / circles[1][1]) ** 2 - 4.0) < 1e-3  # 100 MB vs 25 MB: four times the area
    ys = [float(y) for y in re.findall(r'<circle class="variant"[^>]* cy="([0-9.]+)"', svg)]
    assert ys[0] < ys[1]  # higher agreement sits higher (smaller y in SVG)


def test_no_runtimes_section_for_one_runtime(tmp_path: Path) -> None:
    onnx_only = {name: spec for name, spec in VARIANTS.items() if name.startswith("ort_")}
    html = render(tmp_path, make_history(tmp_path, onnx_only))
    assert 'id="runtimes"' not in html and 'class="runtimes"' not in html


def test_unknown_precision_gets_its_own_column(tmp_path: Path) -> None:
    variants = {"ort_fp32": VARIANTS["ort_fp32"],
                "gguf_custom": ({"runtime": "llama_cpp", "facts": {}}, 90.0, 9.5, 0.75, 40.0, True)}
    table = read_tables(render(tmp_path, make_history(tmp_path, variants)))[DEVICE]
    assert table["headers"] == ["Runtime", "fp32", "fp16", "int8", "int4", "?"]
    assert names(table["grid"]["llama.cpp"]["?"]) == ["gguf_custom"]

"""graph_passes.save_weights_mapped: weights in a page-aligned data file that onnxruntime maps.

A 64 MiB table only gathered from shows it: mapped, a session that gathers one row holds a few
pages of it; inline, it holds the whole table (and more, while parsing). Each session runs in a
fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgegate.variants.graph_passes import MAPPED_ALIGNMENT, save_weights_mapped

ROWS, COLS = 16384, 1024  # float32: 64 MiB

PEAK_AFTER_ONE_GATHER = """
import json, sys
import numpy as np, onnxruntime
def rss(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
before = rss("VmRSS:")
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
row = session.run(None, {"ids": np.array([7], dtype=np.int64)})[0]
print(json.dumps({"peak_mb": rss("VmHWM:") - before, "row": row[0, :4].tolist()}))
"""


def gather_model(table: np.ndarray) -> object:
    from onnx import TensorProto, helper, numpy_helper

    bias = np.arange(4, dtype=np.float32)  # 16 bytes: stays inline
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]),
             helper.make_node("Slice", ["rows", "starts", "ends", "axes"], ["first"]),
             helper.make_node("Add", ["first", "bias"], ["y"])]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(bias, "bias"),
             *(numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("starts", 0), ("ends", 4), ("axes", 1)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def peak_after_one_gather(model_file: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PEAK_AFTER_ONE_GATHER, str(model_file)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import onnx

    root = tmp_path_factory.mktemp("mapped")
    table = np.random.default_rng(0).standard_normal((ROWS, COLS)).astype(np.float32)
    onnx.save_model(gather_model(table), str(root / "inline.onnx"))
    (root / "mapped").mkdir()
    placed = save_weights_mapped(gather_model(table), root / "mapped" / "model.onnx")
    assert placed == table.nbytes  # the small tensors stay in the graph file
    return {"inline": root / "inline.onnx", "mapped": root / "mapped" / "model.onnx", "table": table}


def test_weights_sit_page_aligned_in_the_data_file(saved: dict) -> None:
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(saved["mapped"]), load_external_data=False).graph
    external = {t.name: {e.key: e.value for e in t.external_data} for t in graph.initializer
                if t.data_location == TensorProto.EXTERNAL}
    assert list(external) == ["table"] and external["table"]["location"] == "model.onnx.data"
    assert int(external["table"]["offset"]) % MAPPED_ALIGNMENT == 0
    reloaded = onnx.load(str(saved["mapped"]))  # onnx reads the data back: the same numbers
    from onnx import numpy_helper

    assert np.array_equal(numpy_helper.to_array(reloaded.graph.initializer[0]), saved["table"])


def test_onnxruntime_maps_them_and_reads_only_what_it_gathers(saved: dict) -> None:
    inline, mapped = peak_after_one_gather(saved["inline"]), peak_after_one_gather(saved["mapped"])
    expected = (saved["table"][7, :4] + np.arange(4)).tolist()
    assert np.allclose(inline["row"], expected) and np.allclose(mapped["row"], expected)
    print(f"peak RSS over the session's start: inline {inline['peak_mb']:.0f} MB, mapped {mapped['peak_mb']:.0f} MB "
          f"(table {saved['table'].nbytes / 2**20:.0f} MiB)")
    assert inline["peak_mb"] > 60  # the whole table, at least
    assert mapped["peak_mb"] < 20  # onnxruntime's own start-up and a page or two of the table

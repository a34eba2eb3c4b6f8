"""The litert_lm_bundle recipe and the LiteRT-LM backend, on the tiny Llama against torch.

The tiny model goes through the real exporter and engine: a lossless (fp32) bundle must score
each token as torch does to float precision, and its decode steps, fed the text's own tokens,
must pick torch's next token on the same prefix; the int8 bundle is held to a looser bound.

The tiny model's attention is sharpened first (query, value and output projections x4): with its
random weights as they are, the next-token argmax hardly depends on the context, and a decode
loop that fed every token twice would still pick torch's tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_lm", reason="the LiteRT-LM engine needs litert-lm-api (pip install litert-lm-api==0.18.1)")
pytest.importorskip("litert_torch", reason="the litert_lm_bundle recipe exports with litert-torch (pip install litert-torch)")

from edgegate.runner.accuracy import accuracy, save_top_k, top_k
from edgegate.runner.backends import BACKENDS
from tinymodel import VOCAB, build_suite

pytestmark = pytest.mark.slow

SUITE = """\
schema: 1
name: litert_lm
base_model: {kind: hf_dir, path: tiny_model}
reference: fp32
variants:
  fp32: {recipe: litert_lm_bundle, params: {quantization: fp32}}
  int8: {recipe: litert_lm_bundle}
"""
STEPS = 12
SHARPEN = 4.0


def sharpened(source: Path, folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(source, folder)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.self_attn.o_proj):
                projection.weight.mul_(SHARPEN)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return sharpened(tiny_model_dir, tmp_path_factory.mktemp("litert-lm-suite") / "tiny_model")


@pytest.fixture(scope="module")
def bundles(model_dir: Path, shared_cache: Path) -> dict:
    root = model_dir.parent
    (root / "suite.yaml").write_text(SUITE)
    return build_suite(root / "suite.yaml", shared_cache)


@pytest.fixture(scope="module")
def text_ids(model_dir: Path) -> list[int]:
    from edgegate.evaldata import EVAL_TOPICS, english_text
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return tokenizer.encode(english_text(EVAL_TOPICS), add_special_tokens=False).ids


def opened(artifact) -> object:
    return BACKENDS["litert_lm"](str(artifact.folder / artifact.manifest["model_file"]), [], 1)


def torch_logprobs(model_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()


def torch_nll(model_dir: Path, ids: list[int]) -> np.ndarray:
    logprobs = torch_logprobs(model_dir, ids)[:-1]
    return -logprobs[np.arange(len(ids) - 1), ids[1:]]


def test_manifest_names_the_runtime_and_the_checks(bundles: dict) -> None:
    for name, precision in (("fp32", "fp32"), ("int8", "int8")):
        manifest = bundles[name].manifest
        facts = manifest["facts"]
        assert manifest["runtime"] == "litert_lm" and manifest["model_file"] == "model.litertlm"
        assert set(manifest["files"]) == {"model.litertlm", "tokenizer.json"}
        assert facts["precision"] == precision and facts["tokenizer_check"].startswith("identical ids on ")
        assert "perplexity" in facts["load_check"] and facts["weight_bytes_per_token"] > 0
    assert "INT8" in bundles["int8"].manifest["facts"]["weight_types"]
    assert "INT8" not in bundles["fp32"].manifest["facts"]["weight_types"]
    assert bundles["int8"].manifest["facts"]["weight_bytes_per_token"] < bundles["fp32"].manifest["facts"]["weight_bytes_per_token"] / 2


def test_scores_are_torch_negative_log_likelihoods(bundles: dict, model_dir: Path, text_ids: list[int]) -> None:
    window = text_ids[100:165]
    expected = torch_nll(model_dir, window)
    lossless = opened(bundles["fp32"]).target_nll(window)
    assert lossless.shape == (64,)
    np.testing.assert_allclose(lossless, expected, atol=2e-4)  # the whole context, the first token included
    quantized = opened(bundles["int8"]).target_nll(window)
    assert np.abs(quantized - expected).mean() < 0.05
    assert abs(np.exp(quantized.mean()) / np.exp(expected.mean()) - 1) < 0.05


def test_decode_steps_carry_the_cache(bundles: dict, model_dir: Path, text_ids: list[int]) -> None:
    """Fed the text's own next tokens, each step's pick is torch's argmax on the same prefix
    (where that argmax is a token the engine's text can name: not a partial UTF-8 byte)."""
    backend = opened(bundles["fp32"])
    compared = []
    for start in (0, 300, 600, 900):
        sequence = text_ids[start:start + 10 + 2 * STEPS]
        expected = np.argmax(torch_logprobs(model_dir, sequence), axis=1)[9:]
        row, past, _ = backend.step(np.asarray([sequence[:10]]), backend.empty_past(), 0)
        picks = [int(np.argmax(row[0, -1]))]
        for length in range(10, len(sequence) - 1):
            row, past, elapsed_ns = backend.step(np.asarray([[sequence[length]]]), past, length)
            picks.append(int(np.argmax(row[0, -1])))
            assert elapsed_ns > 0
        compared += [(int(want), got) for want, got in zip(expected, picks) if nameable(backend, int(want))]
    assert len(compared) >= 2 * STEPS
    assert [got for _, got in compared] == [want for want, _ in compared]


def test_greedy_decode_is_torch_greedy(bundles: dict, model_dir: Path, text_ids: list[int]) -> None:
    """From the first prompt whose torch greedy run is nameable tokens, not one token repeated."""
    backend = opened(bundles["fp32"])
    for start in range(0, 1000, 50):
        expected = list(text_ids[start:start + 10])
        for _ in range(STEPS):
            expected.append(int(np.argmax(torch_logprobs(model_dir, expected)[-1])))
        if all(nameable(backend, t) for t in expected[10:]) and len(set(expected[10:])) > 2:
            break
    else:
        pytest.fail("no prompt of the text has a greedy run of nameable tokens")
    sequence = expected[:10]
    row, past, _ = backend.step(np.asarray([sequence]), backend.empty_past(), 0)
    for _ in range(STEPS):
        sequence.append(int(np.argmax(row[0, -1])))
        row, past, _ = backend.step(np.asarray([sequence[-1:]]), past, len(sequence) - 1)
    assert sequence == expected


def nameable(backend, token: int) -> bool:
    return backend.engine.tokenize(backend.engine.detokenize([token])) == [token]


def test_ids_whose_text_reads_otherwise_are_scored_as_given(bundles: dict, model_dir: Path,
                                                            text_ids: list[int]) -> None:
    """A merged token spelled as its characters' tokens: the same text, other ids, and the
    engine must read (and score) the ids it was given, not the text's own tokens."""
    backend = opened(bundles["fp32"])
    word = next(backend.engine.detokenize([t]) for t in text_ids if len(backend.engine.detokenize([t]).strip()) >= 3)
    spelled = [i for character in word for i in backend.engine.tokenize(character)]
    assert len(spelled) > 1 and backend.engine.tokenize(word) != spelled
    window = text_ids[:5] + spelled + text_ids[5:12]
    assert len(backend.chunks(window)) > 1
    np.testing.assert_allclose(backend.target_nll(window), torch_nll(model_dir, window), atol=2e-4)


def test_a_part_of_a_character_cannot_start_a_text(bundles: dict, text_ids: list[int]) -> None:
    backend = opened(bundles["fp32"])
    partial = next(t for t in range(VOCAB) if backend.engine.detokenize([t]) == "\ufffd")
    with pytest.raises(ValueError, match="no text of its own"):
        backend.target_nll(text_ids[:5] + [partial] + text_ids[5:9])


def test_runner_accuracy_gives_perplexity_and_says_why_not_kl(bundles: dict, model_dir: Path,
                                                              text_ids: list[int], tmp_path: Path) -> None:
    windows = [text_ids[i * 33:(i + 1) * 33] for i in range(2)]
    reference = [torch_logprobs(model_dir, window)[:-1] for window in windows]
    nll = np.concatenate([-lp[np.arange(32), w[1:]] for lp, w in zip(reference, windows)])
    save_top_k(str(tmp_path / "reference.npz"), [top_k(lp.astype(np.float32)) for lp in reference], nll)
    events = {e["name"]: e for e in accuracy(opened(bundles["fp32"]), {
        "windows": windows, "reference_logprobs": str(tmp_path / "reference.npz")}) if e.get("event") == "metric"}
    assert events["perplexity"]["value"] == pytest.approx(float(np.exp(nll.mean())), rel=1e-4)
    assert events["perplexity"]["ratio"] == pytest.approx(1.0, abs=1e-4)
    for name in ("kl_mean", "kl_max", "top1_agreement"):
        assert events[name]["value"] is None and events[name]["note"].startswith("unavailable: LiteRT-LM")


def test_settings_say_what_the_timing_covers(bundles: dict) -> None:
    settings = opened(bundles["fp32"]).settings()
    assert settings["runtime"] == "LiteRT-LM" and settings["version"] == "0.18.1" and settings["threads"] == 1
    assert settings["start_token"] is None and "decode step" in settings["timing"]

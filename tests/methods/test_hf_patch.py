"""The HF transformers integration on tiny random Llama / Qwen2 models built from conf/model."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml
from transformers import DynamicCache

from anchor.stats import dense_stats
from methods import get_method
from methods.hf_patch import IMPL_NAME, StatsRecorder, harness_attention, non_causal_mask, patched
from methods.models import load_model

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def _with_cache(model, cache) -> dict:
    """The KV-cache keyword of ``model.forward``: ``cache`` (transformers >= 5.2x, where
    ``past_key_values`` is deprecated) or ``past_key_values`` (5.17)."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def _keep_all(name: str, **overrides) -> dict:
    """``conf/method/<name>.yaml`` with overrides that make the method keep every causal pair on
    the test prompts (<= 40 tokens), with blocks small enough that its sparse path still runs."""
    cfg = yaml.safe_load((CONF.parent / "method" / f"{name}.yaml").read_text())
    return {**cfg, "backend": "triton", **overrides}      # the kernels (interpreter on CPU)


# Methods that, configured to keep every pair, must reproduce the dense model exactly.
KEEP_ALL_METHOD_CONFIGS = [
    {"name": "dense", "backend": "auto"},
    _keep_all("anchor", theta=float("inf"), block_size=16, step=1, dense_if_complete=False),
    _keep_all("anchor_zero", theta=float("inf"), block_size=16, step=1, dense_if_complete=False),
    _keep_all("streaming", global_window=16, local_window=64, block_size=16),
    _keep_all("vertical_slash", vertical_size=64, slash_size=64, last_q=16, sink_columns=4,
              local_diagonals=8, block_size=16),
    _keep_all("flexprefill", gamma=1.0, min_budget=16, block_size=16),
    _keep_all("oracle_topk_stripe", k=64, block_size=16),
    _keep_all("oracle_topcdf_block", cdf=1.0, block_size=16),
    _keep_all("xattention", threshold=1.0, stride=4, block_size=16),
    _keep_all("vertical_slash_block", vertical_size=64, slash_size=64, block_size=16),   # dense by construction
]
MODELS = ["tiny_llama", "tiny_qwen2"]
N_LAYERS = 2
RTOL = ATOL = 1e-5  # fp32 accumulation-order noise on logits of order 1


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    cfg = yaml.safe_load((CONF / f"{request.param}.yaml").read_text())
    model, tokenizer = load_model(cfg, "cpu")
    assert tokenizer is None and model.config._attn_implementation == "sdpa"
    assert model.config.num_hidden_layers == N_LAYERS
    return model


def _ids(batch=1, length=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, length), generator=g)


class Recording:
    """Wraps a method and counts the calls it receives."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, q, k, v, *, sm_scale=None, layer_idx=None):
        self.calls += 1
        return self.inner(q, k, v, sm_scale=sm_scale, layer_idx=layer_idx)


@pytest.mark.parametrize("method_cfg", KEEP_ALL_METHOD_CONFIGS, ids=lambda c: c["name"])
def test_patched_logits_equal_sdpa(model, method_cfg):
    ids = _ids(batch=2)
    with torch.no_grad():
        ref = model(ids).logits
        with patched(model, get_method(method_cfg)):
            out = model(ids).logits
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("method_cfg", KEEP_ALL_METHOD_CONFIGS, ids=lambda c: c["name"])
def test_patched_greedy_generate_equals_sdpa(model, method_cfg):
    ids = _ids(length=29, seed=1)
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    ref = model.generate(ids, **kwargs)
    with patched(model, get_method(method_cfg)):
        out = model.generate(ids, **kwargs)
    assert out.shape == (1, 29 + 8)
    assert torch.equal(out, ref)


def test_chunked_prefill_matches_one_shot(model):
    ids = _ids(length=41, seed=2)
    method = Recording(get_method({"name": "dense", "backend": "auto"}))
    recorder = StatsRecorder()
    with torch.no_grad(), patched(model, method, recorder):
        one_shot = model(ids).logits[:, -1]
        cache = DynamicCache(config=model.config)
        model(ids[:, :17], **_with_cache(model, cache), use_cache=True)
        model(ids[:, 17:30], **_with_cache(model, cache), use_cache=True)
        chunked = model(ids[:, 30:], **_with_cache(model, cache), use_cache=True).logits[:, -1]
    torch.testing.assert_close(chunked, one_shot, rtol=RTOL, atol=ATOL)
    # The causal mask sdpa_mask builds for a chunk is recognised: the method runs every call.
    assert method.calls == 4 * N_LAYERS
    phases = [(r.phase, r.q_len, r.k_len) for r in recorder.records]
    assert phases[N_LAYERS * 2:] == [("chunked_prefill", 13, 30)] * N_LAYERS + [("chunked_prefill", 11, 41)] * N_LAYERS
    assert recorder.dense_fallbacks() == 0 and recorder.prefill_density() == 1.0


def test_recorder_counts_prefill_and_decode(model):
    ids = _ids(length=23, seed=3)
    recorder = StatsRecorder()
    with patched(model, get_method({"name": "dense", "backend": "auto"}), recorder):
        with torch.no_grad():
            model(ids)
        assert [r.layer_idx for r in recorder.records] == list(range(N_LAYERS))
        assert recorder.summary()["calls_prefill"] == N_LAYERS
        recorder.reset()
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    summary = recorder.summary()
    assert summary["calls_prefill"] == N_LAYERS
    assert summary["calls_decode"] == 7 * N_LAYERS  # the first new token comes from the prefill
    assert summary["calls_chunked_prefill"] == 0
    assert summary["dense_fallbacks"] == 0 and summary["prefill_density"] == 1.0
    assert summary["upstream_ratio"] == 1.0 and summary["degenerate_dense"] == 0.0   # dense's own extras
    assert recorder.layer_densities() == {i: 1.0 for i in range(N_LAYERS)}
    decode = recorder.by_phase("decode")
    assert [r.k_len for r in decode[::N_LAYERS]] == list(range(24, 31))
    assert all(r.stats.dense_fallback == 0 and r.q_len == 1 for r in decode)


def test_padding_falls_back_to_dense_and_is_counted(model):
    ids = _ids(batch=2, length=19, seed=4)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding in the first row
    method = Recording(get_method({"name": "dense", "backend": "auto"}))
    recorder = StatsRecorder()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        with patched(model, method, recorder):
            out = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(out[0, 5:], ref[0, 5:], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out[1], ref[1], rtol=RTOL, atol=ATOL)
    assert method.calls == 0
    assert recorder.dense_fallbacks() == N_LAYERS


class Boom:
    def __call__(self, q, k, v, *, sm_scale=None, layer_idx=None):
        raise RuntimeError("boom from the method")


class WrongShape:
    def __call__(self, q, k, v, *, sm_scale=None, layer_idx=None):
        return q[:, :, :1], dense_stats(q.shape[0], q.shape[1], 1, 1, fallback=False)


def test_failing_method_is_not_bypassed(model):
    ids = _ids(length=12)
    with pytest.raises(RuntimeError, match="boom from the method"):
        with torch.no_grad(), patched(model, Boom()):
            model(ids)
    assert model.config._attn_implementation == "sdpa"  # restored after the error
    with pytest.raises(RuntimeError, match="returned"):
        with torch.no_grad(), patched(model, WrongShape()):
            model(ids)
    with torch.no_grad():
        model(ids)  # unpatched again: sdpa runs


def test_attention_outside_patched_raises(model):
    q = torch.randn(1, 4, 3, 16)
    k = v = torch.randn(1, 2, 3, 16)
    module = model.model.layers[0].self_attn
    with pytest.raises(RuntimeError, match="outside"):
        harness_attention(module, q, k, v, None)
    with patched(model, Boom()):
        assert model.config._attn_implementation == IMPL_NAME
        with pytest.raises(ValueError, match="dropout"):
            harness_attention(module, q, k, v, None, dropout=0.1)


def test_non_causal_mask_recognises_causal_masks():
    q_len, k_len = 3, 5
    causal = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert non_causal_mask(None, q_len, k_len) is None
    assert non_causal_mask(causal[None, None].expand(2, 1, -1, -1), q_len, k_len) is None
    padded = causal[None, None].clone()
    padded[..., 0] = False
    assert non_causal_mask(padded, q_len, k_len) is padded
    additive = torch.zeros(1, 1, q_len, k_len).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert non_causal_mask(additive, q_len, k_len) is None
    biased = additive.clone()
    biased[..., 0, 0] = 0.5
    assert non_causal_mask(biased, q_len, k_len) is biased
    with pytest.raises(TypeError, match="unsupported attention_mask"):
        non_causal_mask(causal, q_len, k_len)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "cudnn", "flash", "math"])  # efficient: no GQA
def test_cuda_dense_backends_in_model(backend):
    cfg = yaml.safe_load((CONF / "tiny_llama.yaml").read_text())
    model, _ = load_model(cfg, "cuda", dtype="bf16")
    ids = _ids(length=64, seed=5).cuda()
    method = get_method({"name": "dense", "backend": backend})
    with torch.no_grad():
        ref = model(ids).logits.float()
        with patched(model, method):
            out = model(ids).logits.float()
            cache = DynamicCache(config=model.config)
            model(ids[:, :40], **_with_cache(model, cache), use_cache=True)
            chunked = model(ids[:, 40:], **_with_cache(model, cache), use_cache=True).logits.float()
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(chunked, ref[:, 40:], rtol=2e-2, atol=2e-2)


def test_recorder_aggregates_method_extras():
    from anchor.stats import dense_stats
    from methods.hf_patch import CallRecord

    recorder = StatsRecorder()
    for layer, extra in enumerate([{"upstream_ratio": 0.2, "degenerate_dense": 1.0},
                                   {"upstream_ratio": 0.4, "degenerate_dense": 0.0}, {}]):
        stats = dense_stats(1, 2, 8, 8, fallback=False)
        stats.extra.update(extra)
        recorder.add(CallRecord(layer, "prefill", 8, 8, stats))
    recorder.add(CallRecord(0, "decode", 1, 9, dense_stats(1, 2, 1, 9, fallback=False)))
    assert recorder.upstream_ratio() == pytest.approx(0.3) and recorder.degenerate_fraction() == 0.5
    assert StatsRecorder().upstream_ratio() is None and StatsRecorder().degenerate_fraction() is None

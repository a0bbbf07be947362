"""Greedy decoding modes: token-identical to each other and to greedy decoding without a cache,
the stop rules, step counts, and no deprecated cache argument (tiny random Llama / Qwen2, CPU)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.runner.decode import DECODE_MODES, Decoder, cache_argument, static_bucket
from methods.hf_patch import patched
from methods.models import load_model
from methods.registry import get_method

CONF = Path(__file__).resolve().parents[3] / "conf" / "model"


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen2"])
def model(request):
    return load_model(yaml.safe_load((CONF / f"{request.param}.yaml").read_text()), "cpu")[0]


def _ids(seed: int, length: int = 37) -> torch.Tensor:
    return torch.randint(3, 100, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _no_cache_greedy(model, ids: torch.Tensor, steps: int) -> list[int]:
    """The oracle: argmax of a full forward over the growing sequence, no cache, no stop rule."""
    for _ in range(steps):
        ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, -steps:].tolist()


@pytest.mark.parametrize("mode", DECODE_MODES)
def test_modes_match_greedy_and_the_stop_rules(model, mode):
    import methods  # noqa: F401  (registers the methods)

    decoder = Decoder(model, mode)
    for seed in range(3):
        ids = _ids(seed, 30 + 11 * seed)
        ref = _no_cache_greedy(model, ids, 10)
        with patched(model, get_method({"name": "dense", "backend": "auto"})):
            full = decoder.generate(ids, 10, set())
            stopped = decoder.generate(ids, 10, {ref[4]})
            newline = decoder.generate(ids, 10, {ref[0]}, newline_id=ref[2])
        assert full.tokens == ref and full.decode_steps == 9 and full.prefill_ms > 0
        cut = ref.index(ref[4])
        assert stopped.tokens == ref[:cut] and stopped.decode_steps == cut
        # first token: neither the stop id nor the newline may come first; then newline ends (kept)
        assert newline.tokens[0] not in (ref[0], ref[2])
        reference = Decoder(model, "loop").generate(ids, 10, {ref[0]}, newline_id=ref[2]) if mode != "loop" else newline
        assert newline.tokens == reference.tokens and newline.decode_steps == reference.decode_steps


def test_no_deprecation_warning(model):
    decoder = Decoder(model, "loop")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        decoder.generate(_ids(0), 3, set())
    assert cache_argument(model) in ("cache", "past_key_values")


def test_static_buckets():
    assert static_bucket(10) == 1024 and static_bucket(1024) == 1024 and static_bucket(1025) == 1280
    assert static_bucket(8192 + 128) == 10240 and static_bucket(32768) == 32768
    with pytest.raises(ValueError, match="runner.decode"):
        Decoder(None, "fast")

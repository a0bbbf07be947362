"""Greedy decoding after the method's prefill: one set of stop rules, three ways (``runner.decode``).

Every mode prefills the prompt once with the patched model (timed, synchronised; a
``DynamicCache``; logits of the last position only) and picks the first token itself, then:

* ``loop``: one Python-level ``model(...)`` call per token on the ``DynamicCache`` (the reference);
* ``hf_generate``: ``model.generate`` continues from the same cache (greedy, the stop rules as its
  EOS list), so each step is the same computation as ``loop``; only the loop moves into transformers;
* ``static``: the prefilled K/V are copied into a ``StaticCache`` (length rounded up to a bucket,
  reused between examples) and decode runs with transformers' own ``sdpa`` attention; on CUDA
  the step is ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: no per-layer launch and
  Python overhead). Decode attention is dense in every mode; here it runs over the static buffer
  with a mask instead of exactly the filled keys, so its floating-point sums differ in the last
  bits from ``loop``: token-identical in the CPU tests, but not on the H200 (4 of 9 RULER
  predictions differed late in long answers; ``results/throughput``), hence its own fingerprint
  (``runner.decode_cache``); 8.5x the examples per hour of ``loop`` for SmolLM2 at 8k there.

Stop rules (as before): a stop token ends generation and is not returned; ``max_new_tokens``
caps it; with ``newline_id`` (LongBench samsum) that token also ends generation (and is
returned), and neither it nor a stop token may come first (official ``min_length=context+1``).
"""
from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass

import torch

from benchmarks.timing import sync

DECODE_MODES = ("loop", "hf_generate", "static")
MIN_STATIC_BUCKET = 1024


@dataclass
class Generation:
    """Greedy output of one prompt: new token ids, prefill and decode wall time (ms), and the
    number of model calls after the prefill."""

    tokens: list[int]
    prefill_ms: float
    decode_ms: float
    decode_steps: int


def cache_argument(model) -> str:
    """The forward keyword of the KV cache: ``cache`` (transformers >= 5.2x, where
    ``past_key_values`` is deprecated) or ``past_key_values`` (5.17)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def static_bucket(tokens: int) -> int:
    """Static cache length for ``tokens``: rounded up to a quarter octave (at least
    ``MIN_STATIC_BUCKET``), so a benchmark needs few distinct shapes (compilations)."""
    if tokens <= MIN_STATIC_BUCKET:
        return MIN_STATIC_BUCKET
    quarter = 2 ** (math.ceil(math.log2(tokens)) - 3)
    return math.ceil(tokens / quarter) * quarter


def _take(tokens: list[int], token: int, stop_ids: set[int], newline_id: int | None) -> bool:
    """The stop rules for one new token: a stop token ends generation unreturned, anything else is
    appended, and the newline (when given) ends it after being appended. False: generation ends."""
    if token in stop_ids:
        return False
    tokens.append(token)
    return token != newline_id


@contextlib.contextmanager
def _attention(model, name: str):
    """Run ``model`` with attention implementation ``name`` inside the block, then switch back."""
    def use(impl: str) -> None:
        model.set_attn_implementation(impl)
        model.config._attn_implementation = impl   # set_attn_implementation may only warn (custom names)

    previous = model.config._attn_implementation
    use(name)
    try:
        yield
    finally:
        use(previous)


class Decoder:
    """Greedy generation with the stop rules of the module docstring, in decode mode ``mode``.

    One per model and run: the ``static`` mode keeps its caches and compiled step between calls.
    """

    def __init__(self, model, mode: str):
        if mode not in DECODE_MODES:
            raise ValueError(f"runner.decode must be one of {DECODE_MODES}, got {mode!r}")
        self.model, self.mode = model, mode
        self.cache_kw = cache_argument(model)
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._static: dict[int, object] = {}
        self._step = None

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, stop_ids: set[int],
                 newline_id: int | None = None) -> Generation:
        """Greedy continuation of ``input_ids [1, N]`` (see the module docstring)."""
        from transformers import DynamicCache

        device = input_ids.device
        cache = DynamicCache()
        extra = {"logits_to_keep": 1} if self._keep_last else {}
        sync(device)
        start = time.perf_counter()
        logits = self.model(input_ids=input_ids, use_cache=True, **{self.cache_kw: cache}, **extra).logits[:, -1]
        sync(device)
        prefill_end = time.perf_counter()
        if newline_id is not None:
            logits[:, sorted(stop_ids | {newline_id})] = float("-inf")
        first = int(logits.argmax(-1))
        if max_new_tokens < 1 or first in stop_ids:
            tokens, steps = [], 0
        elif max_new_tokens == 1:
            tokens, steps = [first], 0
        else:
            run = {"loop": self._loop, "hf_generate": self._hf_generate, "static": self._static_decode}[self.mode]
            tokens, steps = run(input_ids, cache, first, max_new_tokens, stop_ids, newline_id)
        sync(device)
        return Generation(tokens, (prefill_end - start) * 1e3, (time.perf_counter() - prefill_end) * 1e3, steps)

    def _loop(self, input_ids, cache, first, max_new_tokens, stop_ids, newline_id) -> tuple[list[int], int]:
        """One model call per token on the prefill's ``DynamicCache``."""
        tokens, token, steps = [first], first, 0
        while len(tokens) < max_new_tokens:
            step = torch.tensor([[token]], device=input_ids.device)
            token = int(self.model(input_ids=step, use_cache=True, **{self.cache_kw: cache}).logits[:, -1].argmax(-1))
            steps += 1
            if not _take(tokens, token, stop_ids, newline_id):
                break
        return tokens, steps

    def _hf_generate(self, input_ids, cache, first, max_new_tokens, stop_ids, newline_id) -> tuple[list[int], int]:
        """``model.generate`` from the prefilled cache with the stop ids (and newline) as EOS."""
        from transformers import GenerationConfig

        eos = sorted(stop_ids | ({newline_id} if newline_id is not None else set()))
        # generate() fills every unset field from model.generation_config: swap in a complete
        # greedy config so that no sampling, penalty or suppression setting of the model leaks in
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens - 1,
                                  eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0)
        ids = torch.cat([input_ids, torch.tensor([[first]], device=input_ids.device)], dim=1)
        saved, self.model.generation_config = self.model.generation_config, config
        try:
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      **{self.cache_kw: cache})
        finally:
            self.model.generation_config = saved
        tokens = [first]
        for token in out[0, ids.shape[1]:].tolist():
            if not _take(tokens, token, stop_ids, newline_id):
                break
        return tokens, out.shape[1] - ids.shape[1]

    def _static_cache(self, cache, length: int):
        """The reused ``StaticCache`` of ``static_bucket(length)``, holding ``cache``'s K/V."""
        from transformers import StaticCache

        bucket = static_bucket(length)
        static = self._static.get(bucket)
        if static is None:
            static = self._static[bucket] = StaticCache(config=self.model.config, max_cache_len=bucket)
        else:
            static.reset()
        filled = cache.get_seq_length()
        positions = torch.arange(filled, device=cache.layers[0].keys.device)
        for index, layer in enumerate(cache.layers):
            static.update(layer.keys, layer.values, index, {"cache_position": positions})
        return static

    def _static_decode(self, input_ids, cache, first, max_new_tokens, stop_ids, newline_id) -> tuple[list[int], int]:
        """Decode on a ``StaticCache`` with sdpa attention, compiled (CUDA graphs) on CUDA."""
        device = input_ids.device
        position = input_ids.shape[1]
        static = self._static_cache(cache, position + max_new_tokens)
        del cache
        if self._step is None:
            kw = self.cache_kw

            def step(token, cache_position, past):
                return self.model(input_ids=token, cache_position=cache_position, use_cache=True,
                                  **{kw: past}).logits[:, -1].argmax(-1)
            self._step = torch.compile(step, mode="reduce-overhead") if device.type == "cuda" else step
        tokens, token, steps = [first], first, 0
        with _attention(self.model, "sdpa"):
            while len(tokens) < max_new_tokens:
                token = int(self._step(torch.tensor([[token]], device=device),
                                       torch.tensor([position], device=device), static))
                position, steps = position + 1, steps + 1
                if not _take(tokens, token, stop_ids, newline_id):
                    break
        return tokens, steps

"""Deterministic synthetic Q/K/V for kernel benchmarks and GPU checks.

Two kinds, both ``q [B, Hq, N, D]``, ``k, v [B, Hkv, N, D]`` (query head ``h`` reads KV head
``h // (Hq // Hkv)``), drawn from one ``torch.Generator`` seeded with ``seed`` on ``device``
(same seed and device type -> same tensors):

``random``
    q, k, v iid N(0, 1). With ``block_size = 128`` a pooled query has norm about
    ``sqrt(D / 128)``, so pooled scores ``qbar . k / sqrt(D)`` have std ``1 / sqrt(128) ~ 0.09``
    while the anchor (a max over about 4096 unit-variance scores) is about 3.5: any
    ``theta >~ 4`` keeps every candidate. This is the worst case for the sparse path (density ~1).

``structured``
    iid base plus a shared direction. Per KV head draw a unit vector ``u`` (shared by the query
    heads of its group). Then, with scores ``s = q . k / sqrt(D)`` (nats) and the parameters
    ``coupling = c0``, ``anchor_logit = A``, ``stripe_logit = S``:

    * queries: the component of every query along ``u`` is set to ``a = c0 * sqrt(D)``
      (``q <- q - (q . u) u + a u``), so ``q . u = a`` exactly for every row;
    * sink: key 0 is ``(A / c0) u``, hence ``s(i, 0) = a * (A / c0) / sqrt(D) = A`` for every query;
    * stripes: ``round(stripe_fraction * (N - 1))`` keys drawn uniformly from ``[1, N)`` (the
      whole sequence, per batch element and KV head) get their component along ``u`` set to
      ``S / c0``, hence ``s(i, j) = S + q_perp . k_perp / sqrt(D)``, i.e. ``S + N(0, 1)`` per query
      and ``S + N(0, 1 / block_size)`` for a pooled query;
    * other keys are untouched: ``s = c0 * z + N(0, 1)`` per query with ``z = k . u ~ N(0, 1)``,
      and ``c0 * z + N(0, 1 / block_size)`` pooled.

    Anchor: the sink is in every query's initial region and beats every other key of the
    initial + local windows (stripes there reach ``S + ~3``; other keys ``~4.5``), so the anchor,
    and the pooled anchor, is ``A``. A candidate key is selected iff its pooled score is
    ``>= A - theta``. With the defaults ``A = 20, S = 14, c0 = 0.25`` and ``theta = 12`` the
    threshold is 8: stripes sit at ``14 +- 0.1`` (6 nats above), other keys at most
    ``0.25 * 5.3 + 0.4 ~ 1.7`` even at 128k tokens (6 nats below). The selection is therefore
    exactly the stripes for any ``theta`` in about ``[7, 18]`` (``A - S + 1 <= theta <= A - 2``),
    and the stage-3 density is about ``stripe_fraction``.

    Dense attention of a query: sink weight ``e^20``, each stripe ``~e^14.5`` on average, the
    ``N`` other keys ``~e^0.5`` each. The unselected keys hold ``N e^0.5 / (e^20 + f N e^14.5)`` of
    the softmax mass: ``< 5e-4`` at 128k tokens, ``< 1e-4`` once ``f = stripe_fraction >= 0.01``,
    so a correct selection gives an output error at the bf16 noise floor, while missed stripes
    are visible (stripes hold most of the mass once ``f * N > e^5.5 ~ 250``).

    Magnitudes stay bf16-safe: ``|k_0| = A / c0 = 80``, ``|q . k| <= 80 * a ~ 226`` for
    ``D = 128`` (logit 20), all well inside bf16 range; inputs are generated in fp32 and cast once.

The derivation assumes ``sm_scale = 1 / sqrt(D)``.
"""
from __future__ import annotations

import math

import torch

KINDS = ("random", "structured")


def _generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def stripe_mask(B: int, Hkv: int, N: int, stripe_fraction: float, device: torch.device | str = "cpu",
                seed: int = 0) -> torch.Tensor:
    """bool ``[B, Hkv, N]``: the stripe keys ``make_qkv("structured", ...)`` uses for this seed.

    ``round(stripe_fraction * (N - 1))`` distinct positions drawn uniformly from ``[1, N)`` per
    batch element and KV head (position 0 is the sink).
    """
    if not 0.0 <= stripe_fraction <= 1.0:
        raise ValueError(f"stripe_fraction must be in [0, 1], got {stripe_fraction}")
    n_stripes = round(stripe_fraction * (N - 1))
    gen = _generator(device, seed + 1)          # own stream: positions do not depend on D or dtype
    mask = torch.zeros(B, Hkv, N, dtype=torch.bool, device=device)
    for b in range(B):
        for h in range(Hkv):
            pos = torch.randperm(N - 1, generator=gen, device=device)[:n_stripes] + 1
            mask[b, h, pos] = True
    return mask


def make_qkv(kind: str, B: int, Hq: int, Hkv: int, N: int, D: int, dtype: torch.dtype = torch.bfloat16,
             device: torch.device | str = "cpu", seed: int = 0, stripe_fraction: float = 0.02,
             anchor_logit: float = 20.0, stripe_logit: float = 14.0, coupling: float = 0.25,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic ``q [B, Hq, N, D]``, ``k, v [B, Hkv, N, D]`` in ``dtype`` on ``device``.

    Args:
        kind: ``"random"`` or ``"structured"`` (see the module docstring for the construction).
        stripe_fraction: structured only: fraction of keys that are stripes.
        anchor_logit: structured only: the sink's logit ``A`` for every query (nats).
        stripe_logit: structured only: a stripe key's logit ``S`` for a pooled query (nats).
        coupling: structured only: ``c0``, the logit of a unit key component along ``u``; the
            spread of the other keys' pooled logits.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown input kind {kind!r}; expected one of {KINDS}")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"Hq={Hq} must be a positive multiple of Hkv={Hkv}")
    if N < 2:
        raise ValueError(f"need N >= 2 tokens, got {N}")
    gen = _generator(device, seed)
    q = torch.randn(B, Hq, N, D, generator=gen, device=device)
    k = torch.randn(B, Hkv, N, D, generator=gen, device=device)
    v = torch.randn(B, Hkv, N, D, generator=gen, device=device)
    if kind == "structured":
        if not (coupling > 0 and anchor_logit > stripe_logit):
            raise ValueError(f"need coupling > 0 and anchor_logit > stripe_logit, got {coupling}, "
                             f"{anchor_logit}, {stripe_logit}")
        u = torch.randn(Hkv, D, generator=gen, device=device)
        u = u / u.norm(dim=-1, keepdim=True)                              # [Hkv, D] unit rows
        uq = u.repeat_interleave(Hq // Hkv, 0)                           # [Hq, D]
        a = coupling * math.sqrt(D)
        q += (a - torch.einsum("bhnd,hd->bhn", q, uq))[..., None] * uq[None, :, None, :]
        stripes = stripe_mask(B, Hkv, N, stripe_fraction, device, seed)  # [B, Hkv, N]
        target = (stripe_logit / coupling - torch.einsum("bhnd,hd->bhn", k, u)) * stripes
        k += target[..., None] * u[None, :, None, :]
        k[:, :, 0] = (anchor_logit / coupling) * u                        # sink [Hkv, D] -> [B, Hkv, D]
    return q.to(dtype), k.to(dtype), v.to(dtype)

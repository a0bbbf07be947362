"""Footnotes of the report tables: what each cost column counts, and when a timing says nothing.

``table_notes(columns, methods, devices)`` returns the markdown footnotes for the columns a table
shows; every table file and ``report.md`` carries them under the table.
"""
from __future__ import annotations

from collections.abc import Iterable

DENSITY = ("`density`: query-key pairs the method computed, estimation stages included, over the "
           "causal pairs of the prompt (prefill, every layer and head). Not a sparsity: it can exceed 1 "
           "when estimation comes on top of (near-)dense work (the oracles compute the full dense "
           "probabilities first, e.g. oracle_topk about 3).")
UPSTREAM = ("`upstream_ratio`: the method's density as its upstream code computes it, one convention "
            "per method, so not comparable across methods (empty: the upstream reports none):")
# What each method's ``stats.extra["upstream_ratio"]`` counts (see the method's docstring).
UPSTREAM_BY_METHOD = {
    "anchor": "the authors' operator ratio (anchor_attn_v4.py): selected stripe keys over "
              "B*H*N*N/group/2, without the initial and local regions and without estimation",
    "anchor_zero": "as anchor (same operator, zero anchor)",
    "flexprefill": "FlexPrefill's computational_ratio: kept 128x128 blocks over the full square "
                   "B*H*nb*nb (above-diagonal blocks included); 1 on its short-input dense rule",
    "xattention": "XAttention: kept blocks over the causal blocks B*H*nb*(nb+1)/2",
    "dense": "1 (the full causal computation)",
}
DEGENERATE = ("`dense_by_construction`: share of the samples in which the method had no sparse "
              "candidates at that length (e.g. anchor's initial + local regions cover the whole "
              "prompt), so its result is dense attention by construction, not a sparse result.")
DENSE_FALLBACKS = ("`dense_fallbacks`: mean number of attention calls per sample that ran dense "
                   "attention instead of the method (counted in `density`).")
SMOKE_TIME = ("`time_ms`: one wall-clock call on synthetic q/k/v, Triton JIT compilation included; "
              "a smoke check, not a benchmark.")
TEMPLATE_SET = ("`[ruler2024]` after a label: RULER prompts from the official RULER 2024 templates "
                "(bench.template_set); unmarked rows use the AnchorAttention copy.")


def timing_note(column: str, devices: Iterable[str]) -> str | None:
    """Caveat for ``column`` when any row was timed on a CPU (or an unknown device)."""
    devices = set(devices)
    if not devices & {"cpu", "unknown"}:
        return None
    note = (f"`{column}` on device `cpu` is not comparable across methods or with GPU timings: on a "
            "CPU the sparse methods run their fp32 PyTorch references (anchor 2-6x slower than dense "
            "SDPA), so only GPU timings measure speed.")
    return note + (" `unknown`: the run recorded no device." if "unknown" in devices else "")


def table_notes(columns: Iterable[str], methods: Iterable[str], devices: Iterable[str],
                template_sets: Iterable[str] = ()) -> list[str]:
    """Markdown footnote lines for a table showing ``columns`` for ``methods`` timed on ``devices``."""
    columns = set(columns)
    notes = []
    if "density" in columns:
        notes.append(DENSITY)
    if "upstream_ratio" in columns:
        shown = sorted(set(methods))
        lines = [f"  - {m}: {UPSTREAM_BY_METHOD.get(m, 'none reported by the upstream code')}" for m in shown]
        notes.append(UPSTREAM + "\n" + "\n".join(lines))
    if "dense_by_construction" in columns:
        notes.append(DEGENERATE)
    if "dense_fallbacks" in columns:
        notes.append(DENSE_FALLBACKS)
    for column in ("prefill_ms", "time_ms"):
        if column in columns and (note := timing_note(column, devices)):
            notes.append(note)
    if "time_ms" in columns:
        notes.append(SMOKE_TIME)
    if set(template_sets) - {"anchorattention"}:
        notes.append(TEMPLATE_SET)
    return [f"- {n}" for n in notes]

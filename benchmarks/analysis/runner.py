"""Paper-reproduction analysis runner (``bench.runner: analysis``, ``conf/bench/analysis.yaml``).

Two parts, both resumable through ``ResultWriter`` ids:

**Accuracy on real attention** (rows ``kind: "accuracy"``). For each ``lengths`` entry, tokens
``[token_offset, token_offset + length)`` of the ``input`` (``benchmarks.analysis.inputs``: the
essays, or a RULER prompt as the "distinct dataset" of the paper's Figs. 9/10; ids do not include
the input or the offset, so keep runs of different inputs in different folders) go through one
dense prefill; post-RoPE q/k/v of
the chosen ``layers`` are captured and the fp32 dense reference is computed once per layer. Then
every sweep setting runs on every layer, and one row per (length, setting, layer, query head)
holds, each metric under its own name:

* ``density``: computed pairs of that head, all stages (estimation included) / causal pairs;
* ``density_sparse``: pairs of the attention stages only (every stage but the estimation ones
  ``select``, ``estimate``, ``oracle``) / causal pairs: the attended fraction; sparsity
  ``= 1 - density_sparse``; per-stage densities under ``stages``;
* ``mass_recall``: dense softmax mass on the attended keys (mean over query rows);
* ``output_recall_<tol>`` per ``metrics_tol``: fraction of output elements within ``tol`` of
  the fp32 dense output (the AnchorAttention code's "recall", tol 0.01 and 0.005);
* ``relative_error``: ``||out - ref||_F / ||ref||_F`` of that head;
* ``layer_ms``: synchronised wall time of the method call on the whole layer (all heads);
* ``dense_fallback`` of the call; ``label``, ``method``, ``param``, ``value``, ``setting``,
  ``is_default`` (the swept value equals the ``conf/method`` file's).

**Latency on synthetic inputs** (rows ``kind: "latency"``, CUDA only; skipped on CPU with a note
in the summary): for each setting (unless its entry says ``latency: false``) and each
``latency.lengths`` entry, ``triton.testing.do_bench`` median ms of the method on
``make_qkv(latency.kind, ...)`` bf16 inputs of ``latency.shapes`` (``ms``, ``density``,
``density_sparse``, ``dense_fallback``). A point that runs out of memory is written with
``ms: null`` and ``error`` (and not retried on resume).

Sweep entries: ``{method: <conf/method name>, param: <key, list of keys, or null>, values: [...],
overrides: {...}, label: <optional, default the method name>, latency: <optional bool>}``. With
a list of keys each value is a list of the same length (e.g. ``[vertical_size, slash_size]``).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

import methods
from anchor.reference import dense_attention_reference
from anchor.stats import AttentionStats
from benchmarks.analysis.inputs import TokenFn, input_tokens
from benchmarks.analysis.metrics import mass_recall, output_recall, relative_error
from benchmarks.analysis.capture import LayerQKV, capture_qkv
from benchmarks.config_files import conf_yaml
from benchmarks.registry import register_benchmark
from benchmarks.runner.results import ResultWriter, summarize_by
from benchmarks.structured_inputs import make_qkv
from benchmarks.timing import bench_ms, timed_call

ESTIMATION_STAGES = ("select", "estimate", "oracle")   # stages that only decide what to attend
ENTRY_KEYS = {"method", "param", "values", "overrides", "label", "latency"}


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: the method config to build and how its rows are labelled."""

    label: str              # curve name: the entry's label, default its conf/method name
    method_cfg: dict        # full config for ``methods.get_method``
    param: str | None       # swept key(s), comma-joined; None for a single default point
    value: Any              # swept value (a list when several keys are swept)
    setting: str            # "theta=12.0", "vertical_size=512,slash_size=2048" or "default"
    is_default: bool        # the swept value equals the conf/method file's
    latency: bool           # time this setting in the latency part


def expand_sweep(sweep: Sequence[Mapping[str, Any]]) -> list[Setting]:
    """Every ``Setting`` of the sweep entries, in order; rejects unknown keys and duplicates."""
    settings: list[Setting] = []
    for entry in sweep:
        unknown = set(entry) - ENTRY_KEYS
        if unknown or "method" not in entry:
            raise ValueError(f"sweep entry {dict(entry)}: needs 'method'; unknown keys {sorted(unknown)}")
        defaults = conf_yaml("method", entry["method"])
        base = {**defaults, **dict(entry.get("overrides") or {})}
        param = entry.get("param")
        keys = [] if param is None else [param] if isinstance(param, str) else list(param)
        missing = [k for k in keys if k not in base]
        if missing:
            raise ValueError(f"method {entry['method']!r} has no hyperparameter(s) {missing}")
        if keys and not entry.get("values"):
            raise ValueError(f"sweep entry for {entry['method']!r} sweeps {keys} but lists no values")
        for value in entry["values"] if keys else [None]:
            vals = [] if not keys else [value] if len(keys) == 1 else list(value)
            if len(vals) != len(keys):
                raise ValueError(f"{entry['method']}: value {value!r} does not match param {keys}")
            chosen = dict(zip(keys, vals))
            settings.append(Setting(
                label=str(entry.get("label") or entry["method"]), method_cfg={**base, **chosen},
                param=",".join(keys) or None, value=value,
                setting=",".join(f"{k}={v}" for k, v in chosen.items()) or "default",
                is_default=all(defaults.get(k) == v for k, v in chosen.items()),
                latency=bool(entry.get("latency", True))))
    seen = [(s.label, s.setting) for s in settings]
    dup = {x for x in seen if seen.count(x) > 1}
    if dup:
        raise ValueError(f"sweep repeats (label, setting) {sorted(dup)}: give the entries distinct labels")
    return settings


def accuracy_id(length: int, s: Setting, layer: int, head: int | str) -> str:
    """Row id of one (length, setting, layer, head)."""
    return f"acc/{length}/{s.label}/{s.setting}/L{layer}/H{head}"


def latency_id(length: int, s: Setting) -> str:
    """Row id of one latency measurement."""
    return f"lat/{s.label}/{s.setting}/N{length}"


def attended_density(stats: AttentionStats) -> torch.Tensor:
    """``[B, H]`` float64: pairs of the attention stages (not ``ESTIMATION_STAGES``) / causal pairs."""
    total = torch.zeros(next(iter(stats.pairs.values())).shape, dtype=torch.float64)
    for name, pairs in stats.pairs.items():
        if name not in ESTIMATION_STAGES:
            total += pairs.double().cpu()
    return total / max(stats.causal_pairs, 1)


@torch.no_grad()
def evaluate_layer(method, x: LayerQKV, ref: torch.Tensor, layer: int, tols: Sequence[float],
                   device: torch.device) -> list[dict[str, Any]]:
    """Per-query-head metrics of one method call on one captured layer.

    ``x.q [B, Hq, N, D]``, ``x.k, x.v [B, Hkv, N, D]``; ``ref [B, Hq, N, D]`` fp32 dense output.
    Per-head values are means over the batch (captures have ``B = 1``).
    """
    out, stats, ms = timed_call(method, x, layer, device)
    attended = method.attended(x.q, x.k, x.v, sm_scale=x.sm_scale)
    mass = mass_recall(x.q, x.k, attended, x.sm_scale).mean(0)              # [Hq]
    density = stats.density_per_head().mean(0)                               # [Hq]
    sparse = attended_density(stats).mean(0)                                 # [Hq]
    stages = {name: pairs.double().cpu().mean(0) / max(stats.causal_pairs, 1)
              for name, pairs in stats.pairs.items()}                        # name -> [Hq]
    rows = []
    for h in range(out.shape[1]):
        o, r = out[:, h:h + 1], ref[:, h:h + 1]                              # [B, 1, N, D]
        rows.append({"head": h, "density": float(density[h]), "density_sparse": float(sparse[h]),
                     "stages": {name: float(d[h]) for name, d in stages.items()},
                     "mass_recall": float(mass[h]),
                     **{f"output_recall_{tol:g}": output_recall(o, r, tol) for tol in tols},
                     "relative_error": relative_error(o, r),
                     "dense_fallback": int(stats.dense_fallback), "layer_ms": ms})
    return rows


def _head_mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row (``head: "mean"``) averaging the numeric fields of per-head ``rows`` of a layer."""
    first = rows[0]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k, v in first.items()
            if isinstance(v, float) and k != "layer_ms"}
    stages = {n: sum(r["stages"][n] for r in rows) / len(rows) for n in first["stages"]}
    return {**first, **mean, "stages": stages, "head": "mean"}


def _setting_fields(s: Setting) -> dict[str, Any]:
    return {"label": s.label, "method": s.method_cfg["name"], "param": s.param, "value": s.value,
            "setting": s.setting, "is_default": s.is_default}


def run_accuracy(cfg: Mapping[str, Any], settings: list[Setting], model, tokenizer, writer: ResultWriter,
                 device: torch.device, token_fn: TokenFn, model_name: str) -> None:
    """The accuracy part (module docstring): writes the rows ``writer`` does not hold yet."""
    tols = [float(t) for t in cfg.get("metrics_tol", [0.01, 0.005])]
    per_head = bool(cfg.get("per_head", True))
    n_heads = model.config.num_attention_heads
    layers = cfg.get("layers")
    n_layers = model.config.num_hidden_layers
    layer_ids = [int(x) for x in layers] if layers is not None else list(range(n_layers))
    if any(not 0 <= i < n_layers for i in layer_ids):
        raise ValueError(f"bench.layers {layer_ids} outside the model's {n_layers} layers")
    for length in [int(n) for n in cfg.get("lengths") or []]:
        done = writer.done_ids()
        heads = range(n_heads) if per_head else ["mean"]
        pending = [(s, layer) for s in settings for layer in layer_ids
                   if any(accuracy_id(length, s, layer, h) not in done for h in heads)]
        if not pending:
            print(f"[analysis] N={length}: every accuracy row already written", flush=True)
            continue
        offset = int(cfg.get("token_offset", 0))
        ids = token_fn(tokenizer, offset + length)[:, offset:].to(next(model.parameters()).device)  # [1, length]
        captured = capture_qkv(model, ids, sorted({layer for _, layer in pending}))
        refs: dict[int, torch.Tensor] = {}
        warm: set[tuple[str, str]] = set()
        for s, layer in pending:
            x = captured[layer]
            if layer not in refs:                                   # fp32 dense output [B, Hq, N, D]
                refs[layer] = dense_attention_reference(x.q.float(), x.k.float(), x.v.float(),
                                                        sm_scale=x.sm_scale)
            method = methods.get_method(s.method_cfg)
            if (s.label, s.setting) not in warm:                    # JIT / autotune outside the timing
                method(x.q, x.k, x.v, sm_scale=x.sm_scale, layer_idx=layer)
                warm.add((s.label, s.setting))
            rows = evaluate_layer(method, x, refs[layer], layer, tols, device)
            for row in rows if per_head else [_head_mean(rows)]:
                if accuracy_id(length, s, layer, row["head"]) in done:     # a layer cut short mid-heads
                    continue
                writer.append({"id": accuracy_id(length, s, layer, row["head"]), "kind": "accuracy",
                               "model": model_name, "length": length, "input": cfg.get("input", "essays"),
                               "token_offset": offset, "layer": layer,
                               **_setting_fields(s), **row})
        print(f"[analysis] N={length}: {len(pending)} (setting, layer) pairs done", flush=True)
        del captured, refs


def run_latency(cfg: Mapping[str, Any], settings: list[Setting], writer: ResultWriter,
                device: torch.device) -> list[str]:
    """The latency part (module docstring); returns notes for the summary (why it was skipped)."""
    lat = cfg.get("latency") or {}
    if not lat.get("enabled", False):
        return []
    if device.type != "cuda":
        note = f"latency skipped on device {device}: do_bench timings need CUDA"
        print(f"[analysis] {note}", flush=True)
        return [note]
    shapes = lat["shapes"]
    hq, hkv, d = int(shapes["q_heads"]), int(shapes["kv_heads"]), int(shapes["head_dim"])
    timing = SimpleNamespace(warmup_ms=float(lat.get("warmup_ms", 25)), rep_ms=float(lat.get("rep_ms", 100)),
                             cpu_reps=1)
    notes = []
    for length in [int(n) for n in lat["lengths"]]:
        done = writer.done_ids()
        todo = [s for s in settings if s.latency and latency_id(length, s) not in done]
        if not todo:
            continue
        q, k, v = make_qkv(lat.get("kind", "structured"), 1, hq, hkv, length, d, torch.bfloat16, device,
                           seed=int(lat.get("seed", 0)), stripe_fraction=float(lat["stripe_fraction"]))
        for s in todo:
            method = methods.get_method(s.method_cfg)
            row = {"id": latency_id(length, s), "kind": "latency", "length": length, **_setting_fields(s),
                   "input": lat.get("kind", "structured"), "q_heads": hq, "kv_heads": hkv, "head_dim": d,
                   "stripe_fraction": float(lat["stripe_fraction"]), "dtype": "bf16"}
            call = functools.partial(method, q, k, v, sm_scale=d ** -0.5, layer_idx=0)
            try:
                _, stats = call()                                            # warm-up + work counts
                ms = bench_ms(call, device, timing)
                row.update(ms=ms, density=stats.density, density_sparse=float(attended_density(stats).mean()),
                           dense_fallback=int(stats.dense_fallback))
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row.update(ms=None, error="out of memory")
                notes.append(f"latency {s.label} {s.setting} N={length}: out of memory")
            writer.append(row)
            del method, call
        print(f"[analysis] latency N={length}: {len(todo)} settings timed", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    return notes


def summarize(rows: list[dict[str, Any]], tols: Sequence[float]) -> dict[str, Any]:
    """Per (label, setting, length) means: accuracy metrics over layers x heads, and latency."""
    acc = [r for r in rows if r.get("kind") == "accuracy"]
    lat = [r for r in rows if r.get("kind") == "latency"]
    metrics = ["density", "density_sparse", "mass_recall", *[f"output_recall_{t:g}" for t in tols],
               "relative_error", "layer_ms"]
    return {"bench": "analysis", "n_samples": len(rows), "n_accuracy": len(acc), "n_latency": len(lat),
            "by_setting": summarize_by(acc, ["label", "setting", "length"], metrics),
            "latency": summarize_by(lat, ["label", "setting", "length"], ["ms", "density", "density_sparse"])}


def _plain(cfg: Any) -> dict[str, Any]:
    """A plain dict from a Hydra/OmegaConf config or a mapping."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def run_analysis(bench_cfg: Mapping[str, Any], model, tokenizer, writer: ResultWriter,
                 device: str | torch.device, token_fn: TokenFn | None = None) -> dict[str, Any]:
    """Run the accuracy and latency parts of ``bench_cfg`` and return the summary dict.

    Args:
        bench_cfg: ``conf/bench/analysis.yaml`` keys: ``lengths``, ``token_offset``, ``layers``
            (null = all), ``sweep``, ``metrics_tol``, ``per_head``, ``latency``.
        model: Hugging Face causal LM whose attention ``capture_qkv`` can patch.
        tokenizer: passed to ``token_fn``.
        writer: result file; rows whose id it holds are skipped (resume).
        device: where the method calls and timings run (the model's device).
        token_fn: ``(tokenizer, length) -> [1, length]`` token ids; default the ``input`` setting's
            (``benchmarks.analysis.inputs.input_tokens``, essays when unset).
    """
    cfg = _plain(bench_cfg)
    device = torch.device(device)
    settings = expand_sweep(cfg["sweep"])
    model_name = (writer.config.get("model") or {}).get("name") or model.config.model_type
    token_fn = token_fn or input_tokens(str(cfg.get("input", "essays")))
    run_accuracy(cfg, settings, model, tokenizer, writer, device, token_fn, model_name)
    notes = run_latency(cfg, settings, writer, device)
    summary = summarize(writer.rows(), [float(t) for t in cfg.get("metrics_tol", [0.01, 0.005])])
    summary["notes"] = notes
    return summary


register_benchmark("analysis", runner="analysis")

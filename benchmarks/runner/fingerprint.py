"""The fingerprint of a run's result-affecting config, so a resume never mixes two configs.

Result-affecting (compared on resume and merge): the whole ``model`` and ``method`` blocks, the
``bench`` block except the keys of ``SAMPLE_COUNT_KEYS`` (how many examples, not which ones or how
they are built), the global ``seed``, and ``harness``: the package version plus
``RESULTS_VERSION``, a constant bumped by any commit that changes the results of an unchanged
config (prompts, scoring, decoding, attention numerics).

Also result-affecting: ``runner.decode_cache``, the cache the greedy decode runs on (``dynamic`` for
``runner.decode`` ``loop`` and ``hf_generate``, which compute the same steps; ``static`` for
``static``, whose masked static-cache sums differ in the last bits and, on the H200, changed 4 of 9
RULER predictions against ``loop`` on identical prefills). A folder fingerprinted before this key
existed takes it from its samples' ``decode`` fields (``legacy_decode_cache``).

Not result-affecting: ``device``, ``logger``/``wandb``, output paths, the rest of ``runner``
(sharding, the context guard), ``experiment`` (its effect is in the blocks above) and the git
commit. The commit is not compared, so that a dirty tree or a newer checkout can resume; every
session's commit is recorded in the run folder's ``sessions.jsonl`` and listed by the summary
(``env.code_versions``). Numbers compare as floats (``theta=12`` equals ``12.0``).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from typing import Any

RESULTS_VERSION = 1
SECTIONS = ("model", "method", "bench")
SAMPLE_COUNT_KEYS = ("num_samples", "limit", "rounds", "cache_dir")
FILE = "fingerprint.json"
DECODE_CACHE_KEY = "runner.decode_cache"
DECODE_CACHES = {"loop": "dynamic", "hf_generate": "dynamic", "static": "static"}


def harness_version() -> str:
    """``<package version>+results<RESULTS_VERSION>``."""
    try:
        package = importlib.metadata.version("anchor-harness")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    return f"{package}+results{RESULTS_VERSION}"


def _canonical(value: Any) -> Any:
    """JSON-comparable form: numbers as floats, mappings and sequences recursively."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = _canonical(value)


def config_fingerprint(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Flat ``{"method.theta": 12.0, ...}`` of the result-affecting keys of a resolved config.

    ``None`` for a config with none of ``SECTIONS`` (tests, ad-hoc writers): nothing to check.
    """
    if not any(config.get(s) is not None for s in SECTIONS):
        return None
    out: dict[str, Any] = {"harness": harness_version(), "seed": _canonical(config.get("seed"))}
    for section in SECTIONS:
        block = dict(config.get(section) or {})
        if section == "bench":
            block = {k: v for k, v in block.items() if k not in SAMPLE_COUNT_KEYS}
        _flatten(section, block, out)
    decode = str((config.get("runner") or {}).get("decode", "loop"))
    out[DECODE_CACHE_KEY] = DECODE_CACHES.get(decode, decode)
    return dict(sorted(out.items()))


def legacy_decode_cache(decode_modes: set[str]) -> str:
    """``runner.decode_cache`` of a folder fingerprinted without it, from its samples' ``decode``
    fields: ``dynamic`` or ``static`` when they agree (no samples: ``dynamic``, the default),
    ``mixed`` when they do not (nothing can resume into it then)."""
    caches = {DECODE_CACHES.get(mode, mode) for mode in decode_modes} or {"dynamic"}
    return caches.pop() if len(caches) == 1 else "mixed"


def digest(fingerprint: Mapping[str, Any]) -> str:
    """Short sha1 of a fingerprint (16 hex digits)."""
    return hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs (``<absent>`` for a missing key)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in ignore or old.get(key, "<absent>") == new.get(key, "<absent>"):
            continue
        lines.append(f"{key}: {json.dumps(old.get(key, '<absent>'))} (in the folder) -> "
                     f"{json.dumps(new.get(key, '<absent>'))} (this run)")
    return lines


class FingerprintMismatch(ValueError):
    """A run folder holds results of another config."""

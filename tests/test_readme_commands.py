"""Every command in README.md, results/REPORT.md and results/*/README.md runs as written.

* ``python run.py ...``: each job composes (Hydra's compose API, multirun sweeps and ``<a|b>``
  placeholders expanded and filtered as the method-aware sweeper does; ``hydra.*`` overrides left out);
* ``python -m <module> ...`` / ``python scripts/<x>.py ...``: ``--help`` works (GPU-only tools
  included); the report tools run as written on the committed results (``--out`` redirected to a
  temporary folder);
* the README's Python snippet runs; ``make`` targets parse (``make -n``);
* the RULER prepare command writes the cache files the run it prepares reads.
"""
from __future__ import annotations

import importlib.util
import itertools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "results" / "REPORT.md", *sorted((ROOT / "results").glob("*/README.md"))]
pytestmark = pytest.mark.slow


def _fenced(text: str) -> tuple[list[tuple[str, list[str]]], str]:
    """(language, lines) of every fenced block, and the text outside them."""
    blocks, outside, current = [], [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[1].append(line)
        else:
            outside.append(line)
    return blocks, "\n".join(outside)


def _commands() -> list[tuple[str, str]]:
    """(document, command) for every ``python`` / ``make`` command in the documents."""
    found = []
    for doc in DOCS:
        blocks, text = _fenced(re.sub(r"\\\n\s*", " ", doc.read_text()))   # joins shell continuations
        lines = [line for lang, body in blocks if lang != "python" for line in body]
        lines += re.findall(r"^ {4}((?:python|make) .*)$", text, re.M)   # indented code
        lines += re.findall(r"`((?:python|make) [^`]+)`", text)          # inline code
        for line in lines:
            for part in re.split(r";\s*", " ".join(line.split("  #")[0].split())):
                if part.startswith(("python ", "make ")):
                    found.append((doc.relative_to(ROOT).as_posix(), part))
    return sorted(set(found))


COMMANDS = _commands()


def _placeholders(command: str) -> str:
    """``<a|b|c>`` -> ``a,b,c`` (a sweep), ``experiment=<name>`` -> every experiment, ``$OUT`` -> a
    scratch folder name."""
    command = re.sub(r"<([^<>|]+(?:\|[^<>|]+)+)>", lambda m: m.group(1).replace("|", ","), command)
    every = ",".join(sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
    return command.replace("experiment=<name>", f"experiment={every}").replace("$OUT", "/tmp/readme-out")


def test_commands_were_found():
    kinds = {c.split()[1] for _, c in COMMANDS}
    assert {"run.py", "-m", "run", "test"} <= kinds and len(COMMANDS) > 20


@pytest.mark.parametrize("doc,command", [c for c in COMMANDS if c[1].startswith("python run.py")])
def test_run_commands_compose(doc, command):
    from hydra import compose, initialize_config_dir

    from hydra_plugins.method_aware_sweeper import filter_job

    plugins = {"joblib_gpus": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher"}
    for launcher, module in plugins.items():
        if f"hydra/launcher={launcher}" in command and importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install -e '.[launchers]')")
    args = [a for a in shlex.split(_placeholders(command))[2:] if not a.startswith("hydra.") and a != "-m"]
    sweeps = [[f"{a.split('=', 1)[0]}={v}" for v in a.split("=", 1)[1].split(",")]
              if "=" in a and "," in a and "[" not in a else [a] for a in args]
    jobs = {tuple(filter_job(list(job))) for job in itertools.product(*sweeps)}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for job in jobs:
            cfg = compose(config_name="config", overrides=list(job))
            assert cfg.method.name and cfg.bench.name, (doc, job)


HELP_ONLY = [c for c in COMMANDS if c[1].startswith("python ") and not c[1].startswith("python run.py")]


@pytest.mark.parametrize("doc,command", HELP_ONLY)
def test_tool_commands_have_help(doc, command):
    words = shlex.split(_placeholders(command))
    target = words[1:3] if words[1] == "-m" else words[1:2]
    proc = subprocess.run([sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{doc}: {' '.join(target)} --help\n{proc.stderr[-2000:]}"
    options = {w.split("=")[0] for w in words if w.startswith("--")}
    missing = [o for o in options if o not in proc.stdout]
    assert not missing, f"{doc}: {command}: options {missing} not in --help"


REPORTS = [c for c in COMMANDS if c[1].startswith("python -m benchmarks.reports.")]


def test_report_tools_are_shown_with_folders_and_out():
    shown = {c.split()[2] for _, c in REPORTS}
    assert shown == {"benchmarks.reports.runs", "benchmarks.reports.figures"}


@pytest.mark.parametrize("doc,command", REPORTS)
def test_report_commands_run_as_written(doc, command, tmp_path):
    """On the committed results, into a temporary folder instead of the ``--out`` written."""
    words = shlex.split(command)
    if "--out" in words:
        words[words.index("--out") + 1] = str(tmp_path / "out")
    proc = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{doc}: {command}\n{proc.stderr[-3000:]}"
    assert any((tmp_path / "out").iterdir())


def test_python_snippet_runs():
    code = "\n".join(next(body for lang, body in _fenced((ROOT / "README.md").read_text())[0] if lang == "python"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups = [line.split()[:2] for line in proc.stdout.splitlines()]
    assert groups[0] == ["2048", "1.0"] and groups[1][0] == "128" and float(groups[1][1]) < 0.5


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.parametrize("target", sorted({c.split()[1] for _, c in COMMANDS if c.startswith("make ")}))
def test_make_targets_parse(target):
    assert subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True).returncode == 0


def test_ruler_prepare_command_fills_the_cache_its_run_reads(tmp_path, monkeypatch, capsys):
    """The README's prepare command (with a stand-in tokenizer and fewer tasks) writes exactly the
    files that `experiment=ruler_smollm2` looks up."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmarks.tasks import ruler
    from benchmarks.tasks.ruler import __main__ as cli
    from tests.benchmarks.tasks.test_ruler import WordTokenizer

    command = next(c for _, c in COMMANDS if c.startswith("python -m benchmarks.tasks.ruler "))
    args = shlex.split(command)[3:] + ["--tasks", "niah_single_1,fwe", "--out", str(tmp_path)]
    monkeypatch.setattr(cli, "load_tokenizer", lambda model_cfg: WordTokenizer())
    assert cli.main(args) == 0
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        bench = OmegaConf.to_container(compose(config_name="config", overrides=["experiment=ruler_smollm2"]).bench)
    cfg = ruler.settings({**bench, "tasks": ["niah_single_1", "fwe"], "cache_dir": str(tmp_path)})
    expected = {ruler.cache_file(cfg, WordTokenizer(), t, n) for t in cfg["tasks"] for n in cfg["lengths"]}
    assert set(tmp_path.rglob("*.jsonl")) == expected

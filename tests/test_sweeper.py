"""The method-aware Hydra sweeper: method.<key> sweeps apply only to methods having <key>, and a
key none of the swept methods has is an error."""
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException

from hydra_plugins.method_aware_sweeper import MethodAwareSweeper, check_method_keys, filter_job, method_keys


def test_method_keys_read_the_yaml():
    assert {"theta", "step", "block_size"} <= method_keys("anchor")
    assert "theta" not in method_keys("dense")
    assert method_keys("no_such_method") == set()


def test_filter_job_drops_foreign_keys_only():
    assert filter_job(["method=dense", "method.theta=8", "bench=ruler"]) == ["method=dense", "bench=ruler"]
    assert filter_job(["method=anchor", "method.theta=8"]) == ["method=anchor", "method.theta=8"]
    assert filter_job(["method.theta=8"]) == ["method.theta=8"]        # default method: left to Hydra


def test_sweep_keeps_distinct_jobs():
    overrides = OverridesParser.create().parse_overrides(
        ["method=dense,anchor,flexprefill", "method.theta=8,12", "seed=0"])
    (jobs,) = MethodAwareSweeper.split_arguments(None, overrides, None)
    assert jobs == [["method=dense", "seed=0"],
                    ["method=anchor", "method.theta=8", "seed=0"],
                    ["method=anchor", "method.theta=12", "seed=0"],
                    ["method=flexprefill", "seed=0"]]
    batches = MethodAwareSweeper.split_arguments(None, overrides, 3)
    assert [len(b) for b in batches] == [3, 1]


def test_a_key_no_swept_method_has_is_an_error():
    overrides = OverridesParser.create().parse_overrides(["method=dense,anchor", "method.thetta=1,2"])
    with pytest.raises(ConfigCompositionException, match=r"method.thetta: no swept method has this key "
                                                         r"\(methods: anchor, dense\)"):
        MethodAwareSweeper.split_arguments(None, overrides, None)


def test_a_key_some_methods_lack_is_skipped_for_them_with_a_note(capsys):
    overrides = OverridesParser.create().parse_overrides(["method=dense,anchor,flexprefill", "method.theta=8",
                                                          "method.gamma=0.9"])
    (jobs,) = MethodAwareSweeper.split_arguments(None, overrides, None)
    assert jobs == [["method=dense"], ["method=anchor", "method.theta=8"], ["method=flexprefill", "method.gamma=0.9"]]
    out = capsys.readouterr().out
    assert "note: method.theta applies to anchor only; skipped for dense, flexprefill" in out
    assert "note: method.gamma applies to flexprefill only; skipped for anchor, dense" in out
    assert check_method_keys([["method=anchor", "method.theta=8"]]) == []


def test_run_py_exits_1_on_a_typo(repo_root, tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "-m", "method=dense,anchor", "method.thetta=1,2", "bench=smoke",
                           "device=cpu", "bench.lengths=[256]", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "method.thetta: no swept method has this key" in proc.stderr
    assert not (tmp_path / "sweep").exists()                               # no job started

"""The method-aware Hydra sweeper: method.<key> sweeps apply only to methods having <key>."""
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.method_aware_sweeper import MethodAwareSweeper, filter_job, method_keys


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

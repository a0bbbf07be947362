"""The benchmark registry: built-ins, runners, and what a registration needs."""
import pytest

from benchmarks import registry
from benchmarks.config_files import CONF_DIR


def test_every_bench_config_names_a_registered_benchmark():
    names = {p.stem for p in (CONF_DIR / "bench").glob("*.yaml")}
    assert names == set(registry.list_benchmarks())
    assert {registry.get_benchmark(n).runner for n in names} == set(registry.RUNNERS)
    assert registry.get_benchmark("longbench").score is not None
    assert registry.get_benchmark("ruler").load_examples is not None


def test_unknown_and_invalid_registrations(monkeypatch):
    with pytest.raises(KeyError, match="unknown benchmark 'nope'.*ruler"):
        registry.get_benchmark("nope")
    monkeypatch.setattr(registry, "BENCHMARKS", dict(registry.BENCHMARKS))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_benchmark("ruler", runner="generate", load_examples=lambda c, t: [])
    with pytest.raises(ValueError, match="runner must be one of"):
        registry.register_benchmark("x", runner="train")
    with pytest.raises(ValueError, match="needs load_examples"):
        registry.register_benchmark("y", runner="generate")
    registry.register_benchmark("mine", runner="generate", load_examples=lambda c, t: [])
    assert "mine" in registry.list_benchmarks()

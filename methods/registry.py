"""The one method registry: a dict plus a decorator.

Every prefill attention method is a class registered under the same name as its
``conf/method/<name>.yaml`` file. Its constructor takes keyword-only hyperparameters with no
defaults, so a missing or misspelled YAML key fails at start-up.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator registering a prefill method under ``name``."""
    def decorate(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls
    return decorate


def list_methods() -> list[str]:
    """Names of every registered method."""
    return sorted(METHODS)


def get_method(cfg: Mapping[str, Any]):
    """Build a method from its config: ``{"name": ..., <hyperparameters>}``."""
    params = {k: v for k, v in dict(cfg).items() if k != "name"}
    name = cfg.get("name") if hasattr(cfg, "get") else None
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available: {list_methods()}")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise TypeError(f"bad hyperparameters for method {name!r}: {err}") from err

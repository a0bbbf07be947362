"""The project's Hydra config files read as plain YAML (outside a Hydra run)."""
from __future__ import annotations

from pathlib import Path

import yaml

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def conf_yaml(group: str, name: str) -> dict:
    """``conf/<group>/<name>.yaml`` as a dict; ``FileNotFoundError`` naming the path if absent."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no config {path}")
    return yaml.safe_load(path.read_text())

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


def composed(group: str, name: str) -> dict:
    """``conf/<group>/<name>.yaml`` composed by Hydra (its defaults list resolved, e.g. a
    ``*_random`` model inheriting its architecture), as a plain dict. For scripts outside ``run.py``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={name}"])
    return OmegaConf.to_container(cfg[group], resolve=True)

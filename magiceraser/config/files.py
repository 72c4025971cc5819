"""Configs read from and written to YAML files.

:func:`load_config` reads a YAML file (every way the file can be wrong is a one-line ConfigError
naming it), applies the ``key=value`` overrides and builds the dataclass; :func:`save_config`
writes a config that :func:`load_config` reads back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from magiceraser.config.build import build_config, config_to_dict
from magiceraser.config.errors import ConfigError, yaml_problem
from magiceraser.config.overrides import apply_overrides

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from an optional YAML file, then apply ``key=value`` overrides."""
    data = _read_config_file(Path(path)) if path is not None else {}
    return build_config(cls, apply_overrides(cls, data, overrides))


def _read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; every way the file can be wrong is a ConfigError naming it."""
    name = repr(str(path))
    if not path.exists():
        raise ConfigError(f"config file {name} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {name} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {name} is not a YAML text file (not UTF-8 at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror or exc}") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {name} is not valid YAML: {yaml_problem(exc)}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {name} must hold a mapping of keys to values, not {type(loaded).__name__}")
    return dict(loaded)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the config as YAML (atomically) so that ``load_config`` reads it back unchanged."""
    from magiceraser.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

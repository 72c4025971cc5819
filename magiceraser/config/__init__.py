"""Typed configs: dataclasses loaded from YAML and overridden from the command line.

Every component declares one dataclass (fields with defaults, a docstring line under each field,
``__post_init__`` raising ``ValueError`` for invalid values). :func:`load_config` turns a YAML
file plus ``key=value`` overrides (dotted keys for nested dataclasses, ``key[i]`` for one element
of a list) into an instance of it, and fails with a :class:`ConfigError` that names the offending
key for unknown keys and for values of the wrong type.

One job per module:

    errors.py       ConfigError; a YAML error on one line
    keypaths.py     the key of an override: dotted and indexed paths, a key given twice refused
    typeinfo.py     the declared type of a key; type names for messages and --help
    values.py       the value of an override, read by its field's type
    overrides.py    overrides applied to the YAML's mapping (the syntax, with examples)
    build.py        dataclasses from mappings (types checked, unknown keys refused) and back
    files.py        load_config / save_config: YAML files
    rst.py          plain_text: docstring markup rendered for the terminal
    help_text.py    field_docs / config_help: the per-key listing of --help
"""

from __future__ import annotations

# config_keys and field_type are public as well, outside __all__.
from magiceraser.config.build import build_config, config_to_dict
from magiceraser.config.errors import ConfigError
from magiceraser.config.files import load_config, save_config
from magiceraser.config.help_text import config_help, field_docs
from magiceraser.config.help_text import config_keys as config_keys
from magiceraser.config.overrides import apply_overrides, parse_overrides
from magiceraser.config.rst import plain_text
from magiceraser.config.typeinfo import field_type as field_type
from magiceraser.config.values import parse_value

__all__ = [
    "ConfigError", "load_config", "parse_overrides", "parse_value", "config_to_dict", "build_config",
    "save_config", "field_docs", "config_help", "apply_overrides", "plain_text",
]

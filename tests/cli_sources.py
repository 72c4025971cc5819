"""What the CLI tests read from the sources: which subcommands are config-driven."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from magiceraser.cli import COMMANDS


def config_driven_commands() -> set[str]:
    """Subcommands whose module builds its parser with ``config_argparser`` (read from the source)."""
    found = set()
    for name, (module, _, _) in COMMANDS.items():
        spec = importlib.util.find_spec(module)
        if spec and spec.origin and "config_argparser(" in Path(spec.origin).read_text(encoding="utf-8"):
            found.add(name)
    return found

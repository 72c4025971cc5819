"""The error every invalid config file or override raises, and YAML's errors put on one line."""

from __future__ import annotations

import yaml

from magiceraser.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the key and what to do.

    A :class:`~magiceraser.errors.UserError` (the CLI prints it as one line, exit code 2) and a
    ``ValueError`` (so ``except ValueError`` catches it too).
    """


# Named by its public home (in tracebacks and pickles), where callers import it from.
ConfigError.__module__ = "magiceraser.config"


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from a (multi-line) YAML error: the problem and where it is."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" if exc.problem_mark else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())

"""What ``magiceraser COMMAND --help`` shows, and what it costs.

* Docstrings' reStructuredText (````x````, ``:func:`x```) is rendered as plain text for the
  terminal by one function, :func:`magiceraser.config.plain_text`, for the config key docs and
  for the descriptions and option help of the config-driven parsers.
* ``--help`` imports no heavy library: ``cache-latents --help`` imported torch through its
  package ``__init__`` (about 1 s warm and 7-11 s from a cold disk, against 0.1 s for the other
  commands). Checked through the real entry point with ``python -X importtime``, whose log
  lists every module the process imported; no timing is asserted.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from magiceraser.cli import COMMANDS
from magiceraser.cli_args import config_argparser
from magiceraser.config import config_help, field_docs, plain_text

ROOT = Path(__file__).resolve().parents[1]

# Libraries that take seconds to import (or pull in CUDA, a cluster client, a web stack).
HEAVY = frozenset({
    "torch", "torchvision", "torchmetrics", "diffusers", "transformers", "accelerate", "peft", "ray", "wandb",
    "scipy", "skimage", "fsspec", "webdataset", "fastapi", "pandas", "matplotlib", "lpips",
})

RST_MARKUP = re.compile(r"``|:(?:func|class|mod|meth|attr|data|exc|obj|ref|py:\w+):`")


# --- the renderer ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("``magiceraser erase``: erase objects", "'magiceraser erase': erase objects"),
    ("see :func:`build_cache` and :mod:`magiceraser.cli`", "see build_cache and magiceraser.cli"),
    ("a :class:`~magiceraser.errors.UserError`", "a UserError"),
    ("a :py:class:`magiceraser.config.ConfigError`", "a magiceraser.config.ConfigError"),
    (":ref:`the protocol <eval-protocol>` here", "the protocol here"),
    ("`the docs <https://example.org/x>`_ say", "the docs (https://example.org/x) say"),
    ("`auto` = CUDA when available", "'auto' = CUDA when available"),
    ("``'A photo of R* {tag}'`` is the prompt", "'A photo of R* {tag}' is the prompt"),  # already quoted
    ('empty (``""``) means none', 'empty ("") means none'),
    ("globs (``olrd-*.tar``), braces ``olrd-{0..9}.tar``", "globs ('olrd-*.tar'), braces 'olrd-{0..9}.tar'"),
    ("two lines\n``x`` kept\n", "two lines\n'x' kept\n"),
    ("no markup: 'a' = 1, x-{a,b}.tar, R* {tag}", "no markup: 'a' = 1, x-{a,b}.tar, R* {tag}"),
])
def test_plain_text(text, expected):
    assert plain_text(text) == expected


@dataclass
class Documented:
    out_dir: str = "runs"
    """Where ``magiceraser cache-latents`` writes (see :func:`build_cache`,
    :class:`~magiceraser.config.ConfigError`).

    A second paragraph is not shown."""
    mode: str = "a"
    """``a`` or ``b``."""


def test_field_docs_are_plain_text():
    assert field_docs(Documented) == {
        "out_dir": "Where 'magiceraser cache-latents' writes (see build_cache, ConfigError).",
        "mode": "'a' or 'b'.",
    }
    assert not RST_MARKUP.search(config_help(Documented))


def test_config_parser_renders_description_and_option_help():
    parser = config_argparser("toy", "``magiceraser toy``: uses :func:`load_config`.\nSecond line.", Documented)
    parser.add_argument("--flag", action="store_true", help="like ``--x``, see :mod:`magiceraser.cli`")
    text = parser.format_help()
    assert "'magiceraser toy': uses load_config.\nSecond line." in text  # the description's lines kept
    assert "like '--x', see magiceraser.cli" in " ".join(text.split())
    assert not RST_MARKUP.search(text), text


# --- every command's --help, through the real entry point --------------------------------------


@functools.cache
def _help(command: str) -> tuple[int, str, frozenset[str]]:
    """Exit status, stdout and the top-level packages imported by ``python -m magiceraser COMMAND --help``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPROFILEIMPORTTIME", "MAGICERASER_DEBUG")}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "magiceraser", command, "--help"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    imported = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                imported.add(name.split(".")[0])
    assert imported, out.stderr[-2000:]  # -X importtime wrote its log: the check below can fail
    return out.returncode, out.stdout, frozenset(imported)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_exits_0_without_importing_heavy_libraries(command):
    code, stdout, imported = _help(command)
    assert code == 0 and stdout.startswith(f"usage: magiceraser {command}"), stdout
    assert not imported & HEAVY, f"magiceraser {command} --help imports {sorted(imported & HEAVY)}"


def test_the_import_check_sees_heavy_imports():
    """The check above can fail: a real run of cache-latents's code path imports torch."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import magiceraser.training.latent_cache.build"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"\|\s*torch$", out.stderr, re.M)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_no_rst_markup(command):
    code, stdout, _ = _help(command)
    assert code == 0
    found = sorted({m.group(0) for m in RST_MARKUP.finditer(stdout)})
    assert not found, f"magiceraser {command} --help shows {found}:\n{stdout}"

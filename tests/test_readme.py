"""Every ``magiceraser ...`` command line in the README's ```bash blocks runs or at least loads.

Lines that can run on a CPU offline in seconds (``--help``, ``tiny-models``, ``demo-scenes``) are
run for real in a temporary directory. The others need GPUs, real weights, data or minutes; they
are listed in ``CONFIG_CHECK_ONLY`` below with the reason, and are run through the real
subcommand up to the point where it has loaded its config (arguments parsed, ``--config`` read,
overrides applied and validated), then stopped. A new README line must be runnable or be added
to that list, and a list entry that no longer matches a line fails, so neither can go stale.

The words of each line are split by bash itself (brace expansion on, globbing off), so a test
argv is what a user pasting the line gets, and a line the shell would expand into more arguments
than it shows is reported.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_sources import config_driven_commands

from magiceraser.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Lines (matched by a substring of the joined line) that are only config-checked, and why.
CONFIG_CHECK_ONLY: dict[str, str] = {
    # Data engine: placeholder inputs under /data or s3://, Ray and (for the real models) GPUs.
    "olrd --config configs/olrd/places365.yaml input=/data/places365_standard": "placeholder /data input; Ray + GPUs",
    "input=/data/places365_train_standard.txt": "placeholder /data list file; Ray + GPUs",
    "input=s3://bucket/places365_standard": "placeholder s3:// input behind ray job submit",
    "output=s3://bucket/olrd": "placeholder bucket (Object storage); Ray + GPUs",
    # Not config-driven: only its arguments are parsed (the shard path is a placeholder).
    "preview /data/olrd/olrd-000000.tar": "placeholder shard under /data",
    # Trainer: real SD 1.5 weights, s3:// shards, GPUs, or the shards `make demo` builds first.
    "train --config configs/train/demo.yaml ": "needs demo/olrd shards from `make demo` and minutes of CPU",
    "data.urls=[s3://bucket/olrd-{000000..000999}.tar]": "placeholder s3:// shards; SD 1.5 weights + GPUs",
    "train --config configs/train/sd15_inpaint.yaml --resume": "SD 1.5 weights + GPUs + a run to resume",
    "-m magiceraser.training.train --config ...": "placeholder config (...) under accelerate: defaults checked",
    "--ray ray.num_workers=16": "placeholder config (...) and a Ray cluster with GPUs: defaults + overrides checked",
    "checkpoint.dir=s3://bucket/runs/sd15/checkpoints": "placeholder config (...) and bucket: defaults + overrides checked",
    "cache-latents --config configs/train/latent_cache_sd15.yaml": "SD 1.5 VAE weights + s3:// shards",
    # Eraser: real SD 1.5 weights and photos that are not in the repository.
    "erase --config configs/erase/default.yaml --image photo.jpg": "SD 1.5 + trained weights; placeholder photo",
    "erase --config configs/erase/default.yaml --image images/": "SD 1.5 + trained weights; placeholder folders",
    "erase --config configs/erase/demo.yaml": "needs the demo's trained model (demo/train) from `make demo`",
    # Service: a running server (Ray Serve) and, for demo.yaml, the demo's trained model.
    "serve --config configs/erase/demo.yaml": "starts a server until Ctrl-C; needs demo/train from `make demo`",
    "serve --config configs/erase/serve.yaml": "SD 1.5 + trained weights + GPUs; starts a server",
    # Command line section.
    "--debug evaluate --config configs/eval/demo.yaml": "needs the demo's models and shards from `make demo`",
}

# Lines that run for real (in a temporary directory), by subcommand, plus every --help.
RUNNABLE_COMMANDS = {"tiny-models", "demo-scenes"}

# Lines the shell would change, awaiting a fix in a README section outside the "Command line" one
# (pasted, they fail: the repeated data.urls is refused); remove an entry once the README quotes
# it (strict: an XPASS fails).
AWAITING_QUOTES: dict[str, str] = {}


@dataclass(frozen=True)
class Line:
    number: int  # first README line of it
    text: str  # continuation lines joined

    def __str__(self) -> str:
        return f"README.md:{self.number}: {self.text}"


def bash_blocks(text: str) -> list[Line]:
    """Logical lines (``\\`` continuations joined, blank and comment-only lines dropped) of ```bash blocks."""
    lines: list[Line] = []
    inside, pending, start = False, "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            inside = stripped == "```bash" if not inside else False
            continue
        if not inside or (not pending and (not stripped or stripped.startswith("#"))):
            continue
        start = start if pending else number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(Line(start, pending + stripped))
        pending = ""
    return lines


def bash_words(text: str) -> list[str]:
    """The argv bash gives the line (brace expansion on, globbing off, comments dropped)."""
    assert "$(" not in text and "`" not in text, f"command substitution in a README line: {text}"
    script = "set -f\nprintf '%s\\0' " + text + "\n"
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


def magiceraser_argv(words: list[str]) -> list[str] | None:
    """The arguments of the ``magiceraser`` invocation in ``words`` (also behind ``--`` or ``-m``)."""
    for i, word in enumerate(words):
        if word == "magiceraser" and (i == 0 or words[i - 1] == "--"):
            return words[i + 1:]
        if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("magiceraser"):
            module = words[i + 1]
            if module == "magiceraser":
                return words[i + 2:]
            name = next(n for n, (mod, _, _) in COMMANDS.items() if mod == module)
            return [name, *words[i + 2:]]
    return None


def without_placeholder_config(argv: list[str]) -> list[str]:
    """``--config ...`` stands for "your config": check the line's overrides against the defaults."""
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word == "--config" and i + 1 < len(argv) and argv[i + 1] == "...":
            skip = True
            continue
        out.append(word)
    return out


def readme_commands() -> list[tuple[Line, list[str]]]:
    found = []
    for line in bash_blocks(README.read_text(encoding="utf-8")):
        argv = magiceraser_argv(bash_words(line.text))
        if argv is not None:
            found.append((line, argv))
    return found


COMMAND_LINES = readme_commands()


def _is_runnable(argv: list[str]) -> bool:
    rest = [a for a in argv if a != "--debug"]
    return not rest or "--help" in rest or "-h" in rest or rest[0] in RUNNABLE_COMMANDS


def _config_only_reason(line: Line) -> str | None:
    return next((why for key, why in CONFIG_CHECK_ONLY.items() if key in line.text), None)


def test_readme_has_command_lines():
    assert len(COMMAND_LINES) >= 10
    assert any(argv[:1] == ["tiny-models"] for _, argv in COMMAND_LINES)


@pytest.mark.parametrize("key", sorted(CONFIG_CHECK_ONLY))
def test_config_check_list_is_current(key):
    assert any(key in line.text for line, _ in COMMAND_LINES), f"no README line matches {key!r}: remove it"


def _quote_marks(line: Line) -> list[pytest.MarkDecorator]:
    reason = AWAITING_QUOTES.get(line.text)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@pytest.mark.parametrize(
    "line", [pytest.param(line, id=str(line.number), marks=_quote_marks(line)) for line, _ in COMMAND_LINES]
)
def test_line_means_what_it_shows(line):
    """Pasted into bash, the line passes the arguments it shows (no brace expansion behind the user's back)."""
    shown = shlex.split(line.text, comments=True)
    assert bash_words(line.text) == shown, f"{line}: the shell expands this line; quote the expanded word"


@pytest.mark.parametrize(
    "line, argv",
    [pytest.param(line, argv, id=str(line.number), marks=_quote_marks(line)) for line, argv in COMMAND_LINES],
)
def test_line_runs_or_loads_its_config(line, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MAGICERASER_DEBUG", raising=False)
    if _is_runnable(argv):
        assert _config_only_reason(line) is None, f"{line} runs here; remove it from CONFIG_CHECK_ONLY"
        monkeypatch.chdir(tmp_path)
        _run(line, argv)
        return
    reason = _config_only_reason(line)
    assert reason, f"{line} cannot run in a test: make it runnable or add it to CONFIG_CHECK_ONLY with why"
    monkeypatch.chdir(ROOT)
    _check_config(line, without_placeholder_config(argv), monkeypatch, capsys)


def _run(line: Line, argv: list[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    assert code in (0, None), f"{line} exited with {code}"


class _Loaded(BaseException):
    """Stops a subcommand once its config (or, without one, its arguments) loaded without error."""


def _check_config(line: Line, argv: list[str], monkeypatch, capsys) -> None:
    """Run the real subcommand until its config is loaded and validated, then stop it."""
    import argparse

    import magiceraser.config

    real_load = magiceraser.config.load_config

    def load_then_stop(cls, path=None, overrides=()):
        raise _Loaded(real_load(cls, path, overrides))

    monkeypatch.setattr(magiceraser.config, "load_config", load_then_stop)
    if argv[0] not in config_driven_commands():
        real_parse = argparse.ArgumentParser.parse_args
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, *a, **k: _stop(real_parse(self, *a, **k)))
    try:
        main(argv)
    except _Loaded:
        return
    except SystemExit as exc:
        pytest.fail(f"{line}: exited {exc.code} before its config loaded: {capsys.readouterr().err.strip()}")
    pytest.fail(f"{line}: returned without loading a config")


def _stop(parsed):
    raise _Loaded(parsed)


def test_readme_check_catches_an_unquoted_brace_pattern():
    """The check above is real: this is what bash does to the Trainer section's example."""
    words = bash_words("magiceraser train data.urls=[s3://b/olrd-{000000..000002}.tar]")
    assert words[2:] == [f"data.urls=[s3://b/olrd-{i:06d}.tar]" for i in range(3)]
    assert bash_words("magiceraser train 'data.urls=[s3://b/olrd-{000000..000002}.tar]'")[2:] == [
        "data.urls=[s3://b/olrd-{000000..000002}.tar]"
    ]


def test_the_command_table_lists_every_command():
    """Each subcommand of the dispatcher has a row in the README's command table, and no row names another."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `magiceraser ([a-z-]+)", table, flags=re.M)
    assert sorted(rows) == sorted(COMMANDS), (rows, list(COMMANDS))

"""The command-line layer (issue 10): user errors as one line with exit 2, --debug, generated --help."""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass, field

import pytest
from cli_sources import config_driven_commands

from magiceraser import cli_args
from magiceraser.cli import COMMANDS, main
from magiceraser.cli_args import CONFIG_CLASSES, config_argparser, load_cli_config
from magiceraser.config import ConfigError, config_keys
from magiceraser.errors import UserError


@dataclass
class ToyNested:
    batch_size: int = 4
    """Samples per process per micro-step."""


@dataclass
class ToyConfig:
    prompt: str | None = None
    """The whole prompt (null: the built-in one)."""
    urls: list[str] = field(default_factory=list)
    """Shards."""
    data: ToyNested = field(default_factory=ToyNested)
    """Data settings."""


def _toy_main(argv):
    """A config-driven subcommand built like the real ones."""
    parser = config_argparser("toy", "A toy subcommand.", ToyConfig)
    parser.add_argument("--fail", choices=["user", "bug"])
    args = parser.parse_args(argv)
    cfg = load_cli_config(ToyConfig, args)
    if args.fail == "user":
        raise UserError("--fail user: this is the user's mistake\n(second line of the message)")
    if args.fail == "bug":
        raise RuntimeError("a bug")
    print(f"prompt={cfg.prompt!r} urls={cfg.urls!r}")
    return 0


@pytest.fixture
def toy(monkeypatch):
    """Register ``magiceraser toy`` for the test, and make sure no debug setting leaks in."""
    module = types.ModuleType("_magiceraser_toy_command")
    module.main = _toy_main
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(COMMANDS, "toy", (module.__name__, "main", "a toy"))
    monkeypatch.delenv("MAGICERASER_DEBUG", raising=False)
    return module


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"magiceraser {command}: "), err
    return err.strip()


def test_user_error_is_one_line_with_exit_2(toy, capsys):
    assert main(["toy", "--fail", "user"]) == 2
    assert _one_line_error(capsys, "toy") == (
        "magiceraser toy: --fail user: this is the user's mistake (second line of the message)"
    )


def test_other_exceptions_keep_their_traceback(toy):
    with pytest.raises(RuntimeError, match="a bug"):
        main(["toy", "--fail", "bug"])


@pytest.mark.parametrize("argv", [["--debug", "toy", "--fail", "user"], ["toy", "--fail", "user", "--debug"]])
def test_debug_flag_reraises(toy, argv):
    with pytest.raises(UserError, match="user's mistake"):
        main(argv)
    assert not cli_args._debug_from_argv  # reset after the command


def test_debug_env_reraises(toy, monkeypatch):
    monkeypatch.setenv("MAGICERASER_DEBUG", "1")
    with pytest.raises(UserError):
        main(["toy", "--fail", "user"])
    monkeypatch.setenv("MAGICERASER_DEBUG", "0")
    assert main(["toy", "--fail", "user"]) == 2


def test_debug_flag_also_for_commands_without_config_parser(monkeypatch, capsys):
    """``--debug`` is global: it is taken out before a subcommand's own parser sees it."""
    seen = []
    module = types.ModuleType("_magiceraser_plain_command")
    module.main = lambda argv: seen.append(list(argv)) or 0
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(COMMANDS, "plain", (module.__name__, "main", "plain"))
    assert main(["plain", "x", "--debug", "--", "--debug"]) == 0
    assert seen == [["x", "--", "--debug"]]  # after "--" it is an argument


def test_overrides_reach_the_config_as_typed(toy, capsys):
    assert main(["toy", "prompt=#1 garden path", "urls=[s3://bucket/olrd-{000000..000999}.tar]"]) == 0
    assert capsys.readouterr().out.strip() == (
        "prompt='#1 garden path' urls=['s3://bucket/olrd-{000000..000999}.tar']"
    )


@pytest.mark.parametrize("content, fragment", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xd8\xff", "is not a YAML text file"),
    (b"data:\n  batch_size: [1,\n", "is not valid YAML"),
    (None, "does not exist"),
])
def test_bad_config_file_is_one_line_naming_it(toy, tmp_path, capsys, content, fragment):
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["toy", "--config", str(path)])
    assert exc.value.code == 2
    line = _one_line_error(capsys, "toy")
    assert fragment in line and str(path) in line


def test_config_error_names_the_key(toy, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["toy", "data.batch_size=many"])
    assert exc.value.code == 2
    assert _one_line_error(capsys, "toy") == "magiceraser toy: data.batch_size: expected an integer, got 'many'"


def test_config_error_with_debug_raises(toy):
    with pytest.raises(ConfigError, match="data.batch_size"):
        main(["--debug", "toy", "data.batch_size=many"])


def test_binary_config_through_a_real_subcommand(tmp_path, capsys, monkeypatch):
    """The finding: ``magiceraser erase --config <binary>`` printed a UnicodeDecodeError traceback."""
    monkeypatch.delenv("MAGICERASER_DEBUG", raising=False)
    binary = tmp_path / "photo.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(SystemExit) as exc:
        main(["erase", "--config", str(binary), "--image", "a.png", "--mask", "m.png", "--out", "o"])
    assert exc.value.code == 2
    assert str(binary) in _one_line_error(capsys, "erase")


def test_toy_help_lists_keys(toy, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["toy", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert re.search(r"^  data\.batch_size\s+int = 4  Samples per process per micro-step\.$", out, re.M), out
    assert re.search(r"^  prompt\s+str \| None = null  The whole prompt", out, re.M), out
    assert "--debug" in out


def test_every_config_driven_subcommand_is_registered():
    assert config_driven_commands() == set(CONFIG_CLASSES)


# Arguments a subcommand requires besides the config (its parser exits before loading without them).
REQUIRED_ARGS = {"erase": ["--image", "a.png", "--mask", "m.png", "--out", "out"]}


class _Loaded(BaseException):
    """Raised by the patched load_config: stops a subcommand right after it chose its config class."""


@pytest.mark.parametrize("command", sorted(CONFIG_CLASSES))
def test_registered_config_class_is_the_one_loaded(command, monkeypatch):
    """The --help listing comes from CONFIG_CLASSES; this ties it to what the subcommand really loads."""
    import magiceraser.config

    def capture(cls, path=None, overrides=()):
        raise _Loaded(cls)

    monkeypatch.setattr(magiceraser.config, "load_config", capture)
    with pytest.raises(_Loaded) as exc:
        main([command, *REQUIRED_ARGS.get(command, [])])
    assert exc.value.args[0] is cli_args.resolve_config_class(CONFIG_CLASSES[command])


@pytest.mark.parametrize("command", sorted(CONFIG_CLASSES))
def test_help_lists_every_config_key(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    rows = config_keys(cli_args.resolve_config_class(CONFIG_CLASSES[command]))
    assert rows
    for key, tp, default, _doc in rows:
        assert re.search(rf"^  {re.escape(key)}\s+{re.escape(tp)} = {re.escape(default)}", out, re.M), (key, out)
    documented = [row for row in rows if row[3]]
    assert len(documented) >= len(rows) // 2  # the docstrings under the fields were found


def test_train_help_shows_the_documented_example(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert re.search(r"^  data\.batch_size\s+int = 4  Samples per process per micro-step\.$", capsys.readouterr().out, re.M)


def test_top_level_help_mentions_debug(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--debug" in out and "MAGICERASER_DEBUG=1" in out

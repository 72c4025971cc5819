from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from magiceraser.config import (
    ConfigError,
    config_help,
    config_to_dict,
    field_docs,
    load_config,
    parse_overrides,
    save_config,
)


@dataclass
class Inner:
    mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = "p"


@dataclass
class Outer:
    steps: int = 10
    lr: float = 1e-4
    tags: list[str] = field(default_factory=list)
    size: tuple[int, int] = (512, 512)
    name: str | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


def test_overrides_nest_and_parse_yaml_scalars():
    assert parse_overrides(["a.b=1", "c=x", "d=[1,2]", "e=true"]) == {"a": {"b": 1}, "c": "x", "d": [1, 2], "e": True}


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\nlr: 1e-3\ninner:\n  project: q\n")
    cfg = load_config(Outer, p, ["inner.mode=disabled", "tags=[grass,sky]", "size=[64,32]", "flag=true"])
    assert cfg.steps == 5 and cfg.lr == 1e-3 and cfg.flag is True
    assert cfg.inner == Inner(mode="disabled", project="q")
    assert cfg.tags == ["grass", "sky"] and cfg.size == (64, 32)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("stepz=3", "stepz"),
        ("inner.modee=x", "inner.modee"),
        ("steps=abc", "steps"),
        ("inner.mode=sometimes", "inner.mode"),
        ("flag=3", "flag"),
        ("steps=0", "steps must be positive"),
        ("noequals", "key=value"),
    ],
)
def test_errors_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(Outer, None, [override])


def test_roundtrip(tmp_path):
    cfg = load_config(Outer, None, ["name=run", "tags=[a]"])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == cfg
    assert config_to_dict(cfg)["inner"]["mode"] == "offline"


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")


# --- Issue 10: overrides are read by the field's declared type ---------------------------------


@dataclass
class Section:
    x: int = 1
    """An int inside a section whose __post_init__ names the section itself."""

    def __post_init__(self):
        if self.x < 0:
            raise ValueError(f"section.x must be >= 0, got {self.x}")


@dataclass
class Typed:
    title: str = "default title"
    """A plain string."""
    prompt: str | None = None
    """An optional string (null = built-in default)."""
    urls: list[str] = field(default_factory=list)
    """Shards."""
    size: tuple[int, int] = (8, 8)
    """Width and height."""
    steps: int = 1
    """Steps."""
    items: list[Inner] = field(default_factory=list)
    """A list of nested configs (still YAML)."""
    inner: Inner = field(default_factory=Inner)
    """A nested config."""
    section: Section = field(default_factory=Section)
    """A nested config whose errors name their own section."""


@pytest.mark.parametrize("text", [
    "#1 garden path",             # YAML: a comment -> None
    "A photo: grass",             # YAML: a mapping
    "olrd-{000000..000999}.tar",  # YAML: fine, but a flow mapping inside [...]
    "yes", "0123", "[not, a, list]", "  two spaces  ", "",
])
def test_str_override_is_the_literal_text(text):
    assert load_config(Typed, None, [f"title={text}"]).title == text
    assert load_config(Typed, None, [f"prompt={text}"]).prompt == text


def test_optional_str_null_is_none():
    assert load_config(Typed, None, ["prompt=a"]).prompt == "a"
    assert load_config(Typed, None, ["prompt=null"]).prompt is None
    assert load_config(Typed, None, ["prompt=~"]).prompt is None


@pytest.mark.parametrize("text, expected", [
    ("[s3://bucket/olrd-{000000..000999}.tar]", ["s3://bucket/olrd-{000000..000999}.tar"]),  # README example
    ("s3://bucket/olrd-{000000..000999}.tar", ["s3://bucket/olrd-{000000..000999}.tar"]),
    ("a.tar,b.tar", ["a.tar", "b.tar"]),
    ("[a.tar, b.tar]", ["a.tar", "b.tar"]),
    ('["a,b.tar", \'c d.tar\']', ["a,b.tar", "c d.tar"]),  # JSON / YAML quoting keeps commas
    ("x-{a,b}.tar,y.tar", ["x-{a,b}.tar", "y.tar"]),  # a comma inside braces does not split
    ("[#1, a: b]", ["#1", "a: b"]),
    ("[]", []),
    ("", []),
])
def test_list_of_str_override(text, expected):
    assert load_config(Typed, None, [f"urls={text}"]).urls == expected


def test_tuple_and_int_overrides():
    assert load_config(Typed, None, ["size=64,32"]).size == (64, 32)
    assert load_config(Typed, None, ["size=[64, 32]"]).size == (64, 32)
    assert load_config(Typed, None, ["steps=010"]).steps == 10  # decimal, not YAML 1.1 octal


def test_structured_overrides_are_still_yaml():
    cfg = load_config(Typed, None, ["items=[{mode: online}, {project: q}]", "inner={mode: disabled}", "inner.project=r"])
    assert cfg.items == [Inner(mode="online"), Inner(project="q")]
    assert cfg.inner == Inner(mode="disabled", project="r")


@pytest.mark.parametrize("override, fragment", [
    ("urls=[a,,b]", "urls[1]"),
    ("urls=[a", "urls"),
    ("urls=[a, 'b]", "urls"),
    ("size=[1,2,3]", "size: expected 2 values"),
    ("size=[a,b]", "size[0]"),
    ("items=[{mode: online]", "items"),
    ("inner.mode=sometimes", "inner.mode"),
    ("steps=many", "steps"),
])
def test_typed_override_errors_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(Typed, None, [override])


def test_key_given_twice_with_different_values_is_refused():
    """What an unquoted data.urls=[olrd-{000000..000999}.tar] becomes in bash: 1000 overrides."""
    expanded = [f"urls=[olrd-{i:06d}.tar]" for i in range(3)]
    with pytest.raises(ConfigError, match=r"urls is given 3 times.*quote"):
        load_config(Typed, None, expanded)
    assert load_config(Typed, None, ["steps=2", "steps=2"]).steps == 2  # same value twice is harmless


def test_plain_value_after_nested_keys_is_refused():
    with pytest.raises(ConfigError, match="inner"):
        load_config(Typed, None, ["inner.project=q", "inner=3"])


def test_post_init_error_names_the_key_once():
    with pytest.raises(ConfigError) as exc:
        load_config(Typed, None, ["section.x=-1"])
    assert str(exc.value).startswith("section.x must be >= 0") and "section.section" not in str(exc.value)


@pytest.mark.parametrize("override, key", [
    ("compose.min_object_area=0", "compose.min_object_area"),
    ("captioner.tensor_parallel_size=0", "captioner.tensor_parallel_size"),
    ("segmenter.num_actors=0", "segmenter.num_actors"),
])
def test_olrd_section_errors_not_doubled(override, key):
    from magiceraser.datasets.config import OLRDConfig

    with pytest.raises(ConfigError) as exc:
        load_config(OLRDConfig, None, [override])
    section = key.split(".")[0]
    assert str(exc.value).startswith(key) and f"{section}.{section}." not in str(exc.value)


# --- Issue 10: every way a config file can be wrong is a one-line ConfigError naming it ------


@pytest.mark.parametrize("content, fragment", [
    (b"\xd8\x00\xff\xfe binary", "not a YAML text file"),
    (b"steps: [1, 2\nlr: 3\n", "is not valid YAML"),
    (b"- a\n- b\n", "must hold a mapping"),
])
def test_bad_config_file(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=fragment) as exc:
        load_config(Outer, path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_config_path_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(Outer, tmp_path)


def test_empty_config_file_means_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_config(Outer, tmp_path / "empty.yaml") == Outer()


def test_a_config_error_is_one_line_and_exit_2_from_the_command(capsys):
    """A value the config refuses reaches the user as the dispatcher's one line (report_user_error), exit 2,
    the way argparse exits for a bad flag: before anything else of the command runs."""
    from magiceraser.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["erase", "--image", "x.png", "--mask", "m.png", "--out", "o", "strength=2"])
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("magiceraser erase: ") and "strength must be in (0, 1], got 2" in line, line
    with pytest.raises(ConfigError):  # and a ValueError to code that builds configs itself
        load_config(Outer, None, ["steps=many"])


# --- Issue 10: --help text generated from the config classes ---------------------------------


def test_field_docs_come_from_the_source():
    assert field_docs(Typed)["urls"] == "Shards."
    assert field_docs(Typed)["prompt"] == "An optional string (null = built-in default)."
    assert "steps" not in field_docs(Outer)  # no docstring under it


def test_config_help_lists_every_key_with_type_default_and_doc():
    text = config_help(Typed)
    for key, tp, default, doc in [
        ("title", "str", '"default title"', "A plain string."),
        ("prompt", "str | None", "null", "An optional string"),
        ("urls", r"list\[str\]", r"\[\]", "Shards."),
        ("size", r"tuple\[int, int\]", r"\[8, 8\]", "Width and height."),
        ("inner.mode", r"\{online,offline,disabled\}", '"offline"', ""),
        ("items\\[i\\].project", "str", '"p"', ""),
        ("section.x", "int", "1", "An int inside a section"),
    ]:
        assert re.search(rf"^  {key}\s+{tp} = {default}(  {doc}|$)", text, re.M), (key, text)
    assert not re.search(r"^  (inner|section|items\[i\])\s", text, re.M)  # sections only through their keys

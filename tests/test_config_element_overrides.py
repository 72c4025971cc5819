"""Overrides of one element of a list: ``methods[1].trained_dir=runs/x`` and ``methods[1]={...}``.

``--help`` lists the fields of list items as ``methods[i].trained_dir``; these tests hold the
config loader to that syntax, at the function level and through ``magiceraser evaluate`` itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from magiceraser.config import ConfigError, apply_overrides, config_keys, load_config, parse_overrides
from magiceraser.evaluation.config import EvalConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Item:
    name: str = "a"
    """Label."""
    mode: Literal["fast", "slow"] = "fast"
    steps: int = 1
    tags: list[str] = field(default_factory=list)
    note: str | None = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass
class Group:
    items: list[Item] = field(default_factory=lambda: [Item("g0"), Item("g1")])


@dataclass
class Root:
    items: list[Item] = field(default_factory=list)
    preset: list[Item] = field(default_factory=lambda: [Item("p0"), Item("p1", steps=5)])
    group: Group = field(default_factory=lambda: Group(items=[Item("r0", steps=3)]))
    size: tuple[int, int] = (8, 8)
    urls: list[str] = field(default_factory=lambda: ["a.tar", "b.tar"])
    count: int = 0


@pytest.fixture
def two_items(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("items:\n  - {name: x, steps: 2, tags: [t]}\n  - {name: y, mode: slow, steps: 4}\n")
    return path


# --- function level ---------------------------------------------------------------------------


def test_one_field_of_one_element_from_the_yaml(two_items):
    cfg = load_config(Root, two_items, ["items[1].steps=7"])
    assert cfg.items == [Item("x", steps=2, tags=["t"]), Item("y", mode="slow", steps=7)]


def test_element_of_the_default_list(tmp_path):
    cfg = load_config(Root, None, ["preset[1].name=changed"])
    assert cfg.preset == [Item("p0"), Item("changed", steps=5)]  # the other fields of the default element kept
    assert load_config(Root, None, ["group.items[0].steps=9"]).group.items == [Item("r0", steps=9)]  # parent's default


def test_element_of_a_nested_section_given_in_part_in_the_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("group: {}\n")
    assert load_config(Root, path, ["group.items[0].mode=slow"]).group.items == [Item("r0", mode="slow", steps=3)]


@pytest.mark.parametrize("override, attr, expected", [
    ("items[0].steps=010", "steps", 10),                 # int: decimal, as for plain keys
    ("items[0].name=#1 garden: path", "name", "#1 garden: path"),  # str: the literal text
    ("items[0].tags=grass,sky", "tags", ["grass", "sky"]),  # list of scalars: comma form
    ("items[0].tags=[grass, sky]", "tags", ["grass", "sky"]),
    ("items[0].note=null", "note", None),               # Optional: null
    ("items[0].note=~x", "note", "~x"),
])
def test_element_fields_are_read_by_their_type_like_plain_keys(two_items, override, attr, expected):
    assert getattr(load_config(Root, two_items, [override]).items[0], attr) == expected


@dataclass
class Wrapper:
    item: Item = field(default_factory=Item)


@pytest.mark.parametrize("raw", ["010", "#1 garden: path", "a,b", "[a, 'b,c']", "null", "1e3", "true", ""])
@pytest.mark.parametrize("fieldname", ["steps", "name", "tags", "note", "mode"])
def test_the_same_text_gives_what_the_plain_key_gives(two_items, fieldname, raw):
    """An element's field is read and checked exactly as the same field under a plain dotted key."""
    try:
        expected = getattr(load_config(Wrapper, None, [f"item.{fieldname}={raw}"]).item, fieldname)
    except ConfigError as exc:
        with pytest.raises(ConfigError) as element_exc:
            load_config(Root, two_items, [f"items[0].{fieldname}={raw}"])
        assert str(element_exc.value) == str(exc).replace("item.", "items[0].", 1)
        return
    assert getattr(load_config(Root, two_items, [f"items[0].{fieldname}={raw}"]).items[0], fieldname) == expected


def test_whole_element_replaced_by_a_mapping(two_items):
    cfg = load_config(Root, two_items, ["items[1]={name: z, steps: 3}"])
    assert cfg.items[1] == Item("z", steps=3)  # mode is the default again, not the old element's "slow"
    assert cfg.items[0] == Item("x", steps=2, tags=["t"])


def test_replacement_then_field_whatever_their_order(two_items):
    for order in (["items[1]={name: z}", "items[1].steps=6"], ["items[1].steps=6", "items[1]={name: z}"]):
        assert load_config(Root, two_items, order).items[1] == Item("z", steps=6)


def test_whole_list_first_then_its_element(two_items):
    cfg = load_config(Root, two_items, ["items[0].name=w", "items=[{name: u}, {name: v}, {name: q}]"])
    assert [i.name for i in cfg.items] == ["w", "v", "q"]


def test_scalar_and_tuple_elements():
    cfg = load_config(Root, None, ["size[1]=64", "urls[0]=olrd-{000000..000009}.tar"])
    assert cfg.size == (8, 64) and cfg.urls == ["olrd-{000000..000009}.tar", "b.tar"]


def test_index_with_leading_zero_is_the_same_key(two_items):
    assert load_config(Root, two_items, ["items[01].steps=3"]).items[1].steps == 3
    with pytest.raises(ConfigError, match=r"items\[1\]\.steps is given 2 times"):
        load_config(Root, two_items, ["items[1].steps=3", "items[01].steps=4"])


def test_the_yaml_mapping_is_not_modified(two_items):
    data = yaml.safe_load(two_items.read_text())
    before = json.dumps(data)
    out = apply_overrides(Root, data, ["items[1].steps=9", "preset[0].name=q"])
    assert json.dumps(data) == before and out["items"][1]["steps"] == 9


@pytest.mark.parametrize("override, message", [
    ("items[2].steps=1", "items[2]: the list has 2 elements (0..1); add an element in the YAML (or set the whole list: items=[...])"),
    ("items[5]={name: q}", "items[5]: the list has 2 elements (0..1); add an element in the YAML (or set the whole list: items=[...])"),
    ("count[0]=1", "count[0]: count is int, not a list; only the elements of a list have an index"),
    ("items[-1].steps=1", "items[-1]: negative indices are not accepted; count from 0 (items[0] is the first element)"),
    ("items[].steps=1", "items[]: give the element's index (counted from 0), e.g. items[0]"),
    ("items[x].steps=1", "items[x]: the index must be a whole number counted from 0, e.g. items[0]"),
    ("items[1].steps=many", "items[1].steps: expected an integer, got 'many'"),
    ("items[1].steps=0", "items[1].steps must be >= 1, got 0"),
    ("items[1].mode=sometimes", "items[1].mode: 'sometimes' is not one of ['fast', 'slow']"),
    ("items[1]=just text", "items[1]: expected a mapping of Item fields, got 'just text'"),
    ("group.items[0].steps=x", "group.items[0].steps: expected an integer, got 'x'"),
])
def test_errors_are_one_line_naming_the_full_key(two_items, override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(Root, two_items, [override])
    assert str(exc.value) == message


def test_unknown_field_of_an_element_names_the_full_key(two_items):
    with pytest.raises(ConfigError, match=r"^unknown config key 'items\[1\]\.stepz' for Item \(did you mean 'items\[1\]\.steps'\?\); valid keys: "):
        load_config(Root, two_items, ["items[1].stepz=1"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'itemz' for Root \(did you mean 'items'\?\); valid keys: "):
        load_config(Root, two_items, ["itemz[0].steps=1"])


def test_empty_list_says_so():
    with pytest.raises(ConfigError, match=r"^items\[0\]: the list is empty; add an element in the YAML"):
        load_config(Root, None, ["items[0].name=x"])


def test_parse_overrides_alone_refuses_an_element_override():
    with pytest.raises(ConfigError, match=r"^items\[1\]\.steps: a list element can only be overridden"):
        parse_overrides(["items[1].steps=3"], Root)


def test_every_element_key_that_evaluate_help_lists_is_accepted(tmp_path):
    """``--help`` shows ``methods[i].field``; each such key, with i=1, sets that field of element 1."""
    path = _small_eval_yaml(tmp_path)
    base = load_config(EvalConfig, path)
    keys = [key for key, *_ in config_keys(EvalConfig) if "[i]." in key]
    assert {"methods[i].trained_dir", "datasets[i].name"} <= set(keys)
    for key in keys:
        listname, fieldname = key.split("[i].")
        element = getattr(base, listname)[-1]
        value = getattr(element, fieldname)
        text = value if isinstance(value, str) else json.dumps(value)
        index = len(getattr(base, listname)) - 1
        cfg = load_config(EvalConfig, path, [f"{listname}[{index}].{fieldname}={text}"])
        assert cfg == base, key


def test_help_shows_the_accepted_syntax():
    out = subprocess.run(
        [sys.executable, "-m", "magiceraser", "evaluate", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"^  methods\[i\]\.trained_dir\s+str = ", out.stdout, re.M), out.stdout
    assert "[]." not in out.stdout
    assert "'datasets[1].name=...'" in out.stdout  # the explanation above the keys, with a quoted example


# --- through the real command -------------------------------------------------------------------


def _small_eval_yaml(tmp_path: Path, out_dir: Path | None = None) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(
        (f"out_dir: {out_dir}\n" if out_dir else "")
        + "datasets:\n  - {name: d, kind: olrd_shards, path: shards}\n"
        + "methods:\n"
        + "  - {name: a, kind: telea}\n"
        + "  - {name: b, kind: magiceraser, content_init: telea, refocus: false, num_inference_steps: 20}\n"
    )
    return path


def _evaluate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "magiceraser", "evaluate", *args], capture_output=True, text=True, cwd=cwd, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "MAGICERASER_DEBUG"},
    )


@pytest.mark.parametrize("override, line", [
    ("methods[3].trained_dir=runs/x",
     "magiceraser evaluate: methods[3]: the list has 2 elements (0..1); add an element in the YAML (or set the whole list: methods=[...])"),
    ("methods[1].num_inference_steps=many", "magiceraser evaluate: methods[1].num_inference_steps: expected an integer, got 'many'"),
    ("methods[1].kind=dalle", "magiceraser evaluate: methods[1].kind: 'dalle' is not one of ['telea', 'lama', 'sd', 'magiceraser']"),
    ("methods[-1].name=x",
     "magiceraser evaluate: methods[-1]: negative indices are not accepted; count from 0 (methods[0] is the first element)"),
])
def test_evaluate_reports_a_bad_element_override_in_one_line(tmp_path, override, line):
    out = _evaluate("--config", str(_small_eval_yaml(tmp_path)), override, cwd=tmp_path)
    assert (out.returncode, out.stderr) == (2, line + "\n"), out
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_evaluate_runs_with_the_overridden_element(tmp_path):
    """The config the command ran with (it saves it in out_dir) holds the element overrides.

    ``datasets=[]`` makes the run stop right after saving it ("nothing to do", exit 2): no model runs.
    """
    out_dir = tmp_path / "eval-out"
    result = _evaluate(
        "--config", str(_small_eval_yaml(tmp_path, out_dir)), "datasets=[]", "device=cpu",
        "methods[1].trained_dir=runs/x", "methods[0]={name: t, kind: telea, telea_radius: 3}", cwd=tmp_path,
    )
    assert result.returncode == 2 and "nothing to do" in result.stderr + result.stdout, result
    saved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert [m["name"] for m in saved["methods"]] == ["t", "b"]
    assert saved["methods"][0]["telea_radius"] == 3
    assert saved["methods"][1]["trained_dir"] == "runs/x"
    assert saved["methods"][1]["num_inference_steps"] == 20  # the rest of element 1 is the YAML's


@dataclass
class Holder:
    group: Group = field(default_factory=lambda: Group(items=[Item("h0", steps=2)]))


@dataclass
class Outermost:
    holders: list[Holder] = field(default_factory=lambda: [Holder()])


def test_list_inside_an_element_takes_the_defaults_build_config_would(tmp_path):
    """Element 0 given without its section: the section (and its list) is the element class's default."""
    path = tmp_path / "c.yaml"
    path.write_text("holders:\n  - {}\n  - {group: {}}\n")
    cfg = load_config(Outermost, path, ["holders[0].group.items[0].mode=slow", "holders[1].group.items[0].name=q"])
    assert cfg.holders[0].group.items == [Item("h0", mode="slow", steps=2)]
    assert cfg.holders[1].group.items == [Item("q", steps=2)]
    assert load_config(Outermost, None, ["holders[0].group.items[0].steps=4"]).holders[0].group.items == [Item("h0", steps=4)]

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from magiceraser.config import ConfigError, config_to_dict, load_config, parse_overrides, save_config


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

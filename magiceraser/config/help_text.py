"""The ``config keys`` listing at the end of a subcommand's ``--help``, generated from its config class.

Every settable key (nested ones dotted, the fields of list items as ``key[i].field``) with its
type, its default and the first paragraph of the docstring under its field, so ``--help`` cannot
go stale.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
from typing import Any

from magiceraser.config.build import config_to_dict, default_instance, field_default
from magiceraser.config.rst import plain_text
from magiceraser.config.typeinfo import init_hints, is_list_type, item_types, type_name


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: one-line docstring}`` from the string literal under each field in the class source.

    Python keeps no attribute docstrings at run time, so they are read from the source with ``ast``
    (base classes first, so a subclass's docstring wins). A class without source gives ``{}``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_attribute_docs(klass))
    return docs


def _class_attribute_docs(klass: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = _one_line(after.value.value)
    return docs


def _one_line(doc: str) -> str:
    """First paragraph of a docstring on one line, as plain text (:func:`plain_text`)."""
    paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return plain_text(" ".join(paragraph.split()))


_MISSING_DEFAULT = "(required)"


def config_keys(cls: type, prefix: str = "", instance: Any = None) -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, doc)`` for every settable key of ``cls``, nested ones dotted.

    Defaults come from ``instance`` (the parent's default for this section) when there is one, so a
    parent that builds its section with non-default values shows those. Items of a list of
    dataclasses are listed as ``key[i].field``, the syntax of an element override.
    """
    if instance is None:
        instance = default_instance(cls)
    docs = field_docs(cls)
    hints = init_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.name not in hints:
            continue
        tp, key = hints[f.name], prefix + f.name
        value = getattr(instance, f.name) if instance is not None else _field_default_or_missing(f)
        if dataclasses.is_dataclass(tp):
            rows += config_keys(tp, key + ".", value if dataclasses.is_dataclass(value) else None)
            continue
        rows.append((key, type_name(tp), _show_default(value), docs.get(f.name, "")))
        item = item_types(tp)[0] if is_list_type(tp) else None
        if item is not None and dataclasses.is_dataclass(item):
            rows += config_keys(item, key + "[i].")
    return rows


def _field_default_or_missing(f: dataclasses.Field) -> Any:
    """The field's own default; ``(required)`` without one, or when its factory fails (help must print)."""
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return _MISSING_DEFAULT
    try:
        return field_default(f)
    except Exception:
        return _MISSING_DEFAULT


def _show_default(value: Any) -> str:
    """A default as the user would type it (JSON: ``""``, ``[]``, ``true``, ``null``)."""
    if value is _MISSING_DEFAULT:
        return value
    return json.dumps(config_to_dict(value), ensure_ascii=False, default=str)


def config_help(cls: type) -> str:
    """The ``config keys`` block appended to a subcommand's ``--help``: key, type = default, doc."""
    rows = config_keys(cls)
    width = max((len(key) for key, *_ in rows), default=0)
    lines = [
        f"config keys of {cls.__name__}: set them in --config FILE.yaml or as key=value (lists as [a,b]",
        "or a,b; quote a value holding spaces, # or {...} for the shell):",
    ]
    element = next((key for key, *_ in rows if "[i]." in key), None)
    if element is not None:
        example = element.replace("[i].", "[1].", 1)
        lines += [
            "one element of a list as key[i].field=value (i from 0; the element must exist), or replace it",
            f"with key[i]={{...}}; quote it for the shell: '{example}=...'",
        ]
    for key, tp, default, doc in rows:
        lines.append(f"  {key:<{width}}  {tp} = {default}" + (f"  {doc}" if doc else ""))
    return "\n".join(lines) + "\n"

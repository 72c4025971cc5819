"""Docstring reStructuredText rendered as plain text for a terminal: the one renderer of ``--help``."""

from __future__ import annotations

import re

_QUOTES = "'\""


# reStructuredText inline markup, as docstrings write it.
_RST_ROLE = re.compile(r":(?:[A-Za-z][\w.+-]*:)+`(?P<body>[^`]+)`")  # :func:`x`, :py:class:`~a.B`
_RST_LINK = re.compile(r"(?<!`)`(?P<text>[^`<]+?)\s*<(?P<url>[^`>]+)>`__?")  # `text <url>`_
_RST_LITERAL = re.compile(r"``(?P<body>[^`]+?)``")  # ``x``
_RST_INTERPRETED = re.compile(r"(?<![`\w])`(?P<body>[^`\s][^`]*?)`(?:__?)?(?![`\w])")  # `x`, `x`_


def plain_text(text: str) -> str:
    """Docstring text with its reStructuredText inline markup rendered for a terminal.

    ``:role:`target``` -> the target as a reader names it (``:class:`~a.b.C``` -> ``C``,
    ``:func:`title <a.b>``` -> ``title``); ````literal```` and ```interpreted``` -> ``'literal'``
    (quoted, as a shell word would be; text already in quotes keeps its own); ```text <url>`_`` ->
    ``text (url)``. Everything else, line breaks included, is kept. The one renderer of ``--help``:
    the config key docs (:mod:`magiceraser.config.help_text`), and descriptions and option help through
    :class:`magiceraser.cli_args.PlainTextHelpFormatter`.
    """
    text = _RST_ROLE.sub(_role_target, text)
    text = _RST_LINK.sub(lambda m: f"{m['text']} ({m['url']})", text)
    text = _RST_LITERAL.sub(lambda m: _quoted(m["body"]), text)
    return _RST_INTERPRETED.sub(lambda m: _quoted(m["body"]), text)


def _role_target(m: re.Match[str]) -> str:
    body = m["body"].strip()
    if body.endswith(">") and "<" in body:  # :ref:`title <target>`
        return body[: body.rindex("<")].strip()
    body = body.lstrip("!")
    if body.startswith("~"):  # :class:`~magiceraser.errors.UserError` -> UserError
        return body[1:].rsplit(".", 1)[-1]
    return body


def _quoted(body: str) -> str:
    if len(body) >= 2 and body[0] in _QUOTES and body[-1] == body[0]:
        return body
    return f"'{body}'"

"""Input listing, sample keys and shard assignment: pure, deterministic functions of the input list.

Inputs are a directory tree of images (Places365-Standard's ``places365_standard/{train,val}/<category>/*.jpg``
included) or a list file (:func:`parse_list_line`), on a local disk or any fsspec filesystem
(``s3://``, ``gs://``, ...).

List files: one image per line, ``path`` or ``path label`` where ``label`` is an integer after
whitespace (Places365's ``places365_train_standard.txt``: ``/a/airfield/00000001.jpg 0``). The
path is the rest of the line, spaces included; a path that itself ends in a blank and digits must
therefore be given with a label. Blank lines and lines starting with ``#`` are ignored. Paths are
relative to ``input_root`` (default: the list file's folder), a leading ``/`` included (Places365
lists are relative to their data folder), and are normalised (``./x.png``, ``d/../x.png`` and
``x.png`` are one image). A list naming one image twice is refused (:class:`InputError`, naming
the lines), since the second line can only be a mistake and silently dropping or keeping it would
change the counts the user expects.

Shard ``i`` holds the inputs at positions ``[i*n, (i+1)*n)`` of the listing (``n`` =
``samples_per_shard``), so any shard can be rebuilt on its own and rebuilding it gives the same
bytes: that is what makes resume idempotent.
"""

from __future__ import annotations

import gc
import hashlib
import posixpath
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from magiceraser.imageio import IMAGE_SUFFIXES
from magiceraser.keys import sample_key  # the rule is defined beside the evaluation's file-name rule

LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv")


class InputError(ValueError):
    """The ``input`` setting names nothing usable (missing, not a list file, repeated lines): one line."""


@dataclass(frozen=True, slots=True)  # slots: a million of them are ~40 MB smaller
class InputItem:
    source: str  # path or URL the image is read from
    rel: str  # path relative to the input root (what the key is derived from)
    key: str  # WebDataset sample key: no dots, unique, deterministic
    index: int  # position in the listing
    shard: int  # index of the shard this input belongs to


def shard_of(index: int, samples_per_shard: int) -> int:
    return index // samples_per_shard


def num_shards(num_inputs: int, samples_per_shard: int) -> int:
    return -(-num_inputs // samples_per_shard)


def shard_name(shard: int) -> str:
    return f"olrd-{shard:06d}"


def make_items(sources: list[tuple[str, str]], samples_per_shard: int) -> list[InputItem]:
    """``(source, rel)`` pairs in listing order -> items with keys and shard indices.

    A path given twice is an error: it would be the same sample under the same key, and listings
    (:func:`list_sources`) never hold one.
    """
    items: list[InputItem] = []
    append = items.append
    seen: set[str] = set()
    add = seen.add
    for i, (source, rel) in enumerate(sources):
        key = sample_key(rel)
        if key in seen:
            raise ValueError(f"{rel!r} is listed twice (key {key})")
        add(key)
        append(InputItem(source, rel, key, i, shard_of(i, samples_per_shard)))
    return items


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _protocol_prefix(fs) -> str:
    """``''`` for the local filesystem, else ``'<protocol>://'`` (what makes a path a URL again)."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return "" if protocol in ("file", "local") else f"{protocol}://"


_LABELLED = re.compile(r"(?P<path>.*?\S)\s+[-+]?\d+")
_LABEL = re.compile(r"[-+]?\d+")


def parse_list_line(line: str) -> str | None:
    """The path a list-file line names (None for a blank or ``#`` line); see the module docstring.

    Only a trailing integer after whitespace is a label, so ``my photo 2.jpg`` is one path and
    ``a b/c.jpg 17`` is the path ``a b/c.jpg``: cutting at the first blank would turn such paths
    into unreadable ones without a word.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    # The rule is _LABELLED (path, blanks, integer); the path then ends where the last run of
    # blanks starts, which rsplit finds at half the regex's cost (a list holds millions of lines).
    # str.split and the regex agree on blanks (\s) and digits (\d: str.isdecimal); only a path
    # holding a newline (never a line of a file) differs, and takes the regex.
    parts = line.rsplit(None, 1)
    if len(parts) == 2 and _LABEL.fullmatch(parts[1]) and "\n" not in parts[0]:
        return parts[0]
    labelled = _LABELLED.fullmatch(line)
    return labelled.group("path") if labelled else line


def normalise_entry(base: str, entry: str) -> tuple[str, str]:
    """``(path, rel)`` of a list entry under ``base``: ``.``/``..`` resolved, so one image has one key.

    ``rel`` is relative to ``base`` (``../other/x.png`` for a path outside it, still one per image).
    This is the rule; :func:`entry_normaliser` gives the same results for a whole list, faster.
    """
    path = posixpath.normpath(f"{base}/{entry.lstrip('/')}")
    return path, posixpath.relpath(path, base)


def entry_normaliser(base: str) -> Callable[[str], tuple[str, str]]:
    """``entry -> normalise_entry(base, entry)``, equal for every entry, at a fraction of the cost.

    ``relpath`` (two ``abspath``, a component split and join) was most of the cost of listing a
    million lines. For a normalised ``base`` (what fsspec gives) two shortcuts are exact:

    * a clean entry (no empty, ``.`` or dot-led component, no trailing ``/``: every Places365 line)
      is already normal: ``path`` is ``base/entry`` and ``rel`` the entry itself;
    * a normalised path that starts with ``base/`` and does not climb out again (``..``) has
      ``rel`` = the rest of the string.

    Anything else (a ``base`` that is not normal or empty, a path that leaves ``base``) takes
    :func:`normalise_entry` itself.
    """
    if not base or base == "//" or posixpath.normpath(base) != base:
        return lambda entry: normalise_entry(base, entry)
    head = "" if base == "." else base + "/"  # normpath drops a leading "./"
    normpath, relpath = posixpath.normpath, posixpath.relpath

    def normalise(entry: str) -> tuple[str, str]:
        e = entry.lstrip("/")
        if e and not e.startswith(".") and "/." not in e and "//" not in e and not e.endswith("/"):
            return head + e, e
        path = normpath(f"{base}/{e}")
        if head and path.startswith(head):
            rel = path[len(head) :]
            if rel and rel != ".." and not rel.startswith("../"):
                return path, rel
        return path, relpath(path, base)

    return normalise


def list_sources(input_path: str, input_root: str = "") -> list[tuple[str, str]]:
    """``(source, rel)`` for every image of a directory tree (sorted) or a list file (file order).

    Raises :class:`InputError` (one line naming ``input=``) when the input is empty, missing, a
    file that is not a list file, unreadable, or a list naming one image twice.
    """
    import fsspec

    if not input_path:
        raise InputError("input is empty: give a directory of images or a list file (input=...)")
    fs, root = fsspec.core.url_to_fs(input_path)
    prefix = _protocol_prefix(fs)
    if fs.isdir(root):
        root = root.rstrip("/")
        files = sorted(p for p in fs.find(root) if _is_image(p))
        return [(prefix + p, p[len(root) + 1 :]) for p in files]
    if not fs.exists(root):
        raise InputError(f"input={input_path!r} does not exist: give a directory of images or a list file")
    if not root.lower().endswith(LIST_EXTENSIONS):
        raise InputError(f"input={input_path!r} is a file but not a list file ({', '.join(LIST_EXTENSIONS)}): "
                         "give a directory of images or a list with one image path per line")
    base = root.rsplit("/", 1)[0] if "/" in root else "."
    if input_root:
        base_fs, base = fsspec.core.url_to_fs(input_root)
        prefix = _protocol_prefix(base_fs)
        base = base.rstrip("/")
    lines = _read_list(fs, root, input_path)
    return _list_entries(lines, base, prefix, input_path)


def _read_list(fs, root: str, input_path: str) -> list[str]:
    """The list file's lines; unreadable or binary files are an :class:`InputError`, not a traceback."""
    try:
        with fs.open(root, "rt", encoding="utf-8") as fh:
            return list(fh)  # universal newlines: \n and \r\n lists read the same
    except OSError as exc:
        raise InputError(f"input={input_path!r}: cannot read the list file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"input={input_path!r} is not a UTF-8 text list file (one image path per line)") from None


def _list_entries(lines: list[str], base: str, prefix: str, input_path: str) -> list[tuple[str, str]]:
    """``(source, rel)`` per path line, in file order; repeated images are refused with their line numbers."""
    out: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    repeats: list[str] = []
    normalise = entry_normaliser(base)
    for number, line in enumerate(lines, start=1):
        entry = parse_list_line(line)
        if entry is None:
            continue
        path, rel = normalise(entry)
        if path in first_line:
            repeats.append(f"line {number} repeats line {first_line[path]} ({rel})")
            continue
        first_line[path] = number
        out.append((prefix + path, rel))
    if repeats:
        shown = "; ".join(repeats[:3]) + (f"; and {len(repeats) - 3} more" if len(repeats) > 3 else "")
        raise InputError(f"input={input_path!r} names {len(repeats)} image(s) more than once after normalising "
                         f"the paths: {shown}; remove the repeated lines")
    return out


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a while (restored after, as it was).

    A listing makes a few million objects and no cycles: the collector's passes over the growing
    heap find nothing and cost a fifth of listing a million lines.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def list_inputs(input_path: str, samples_per_shard: int, input_root: str = "", limit: int = 0) -> list[InputItem]:
    """The job's inputs with keys and shard indices (first ``limit`` only when > 0)."""
    with _collector_paused():
        sources = list_sources(input_path, input_root)
        items = make_items(sources, samples_per_shard)
    return items[:limit] if limit else items


def listing_fingerprint(items: list[InputItem]) -> str:
    """Hash of the keys in order: a resumed job must see the same listing to reuse shards."""
    h = hashlib.sha256()
    # The same bytes as one update per key, in chunks: a million updates cost a second.
    for start in range(0, len(items), 65536):
        h.update("".join([it.key + "\n" for it in items[start : start + 65536]]).encode())
    return h.hexdigest()

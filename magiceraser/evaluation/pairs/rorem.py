"""RORem's test set (Li et al., "RORem: Training a Robust Object Remover with Human-in-the-Loop",
CVPR 2025, arXiv:2501.00740) as evaluation pairs, usually without ground truth.

What was found, and where:

* The test set is ``testset_RORem.tar.gz`` (811 MB) in the Hugging Face dataset
  ``LetsThink/RORem_dataset`` (https://huggingface.co/datasets/LetsThink/RORem_dataset/resolve/main/testset_RORem.tar.gz),
  linked from github.com/leeruibin/RORem, README.md ("Download RORem dataset" table) and from the
  maintainer's answer in leeruibin/RORem issue #8 ("Evaluation set to reproduce Table.2", Sep 2025).
* The paper (Sec. 4.1, as quoted in issue #8): two test sets "which have the same image scenes but under two resolutions:
  512 x 512 and 1024 x 1024. Both test sets have 500 pairs of original images and their corresponding
  masks". Success is judged by human annotators and by the RORem discriminator, i.e. reference-free;
  in issue #8 a user asks whether the ground truth will be released, with no answer. So the
  released test set has inputs and masks, and no ground truth: ``target=None``.
* leeruibin/RORem README.md: "For each dataset, we build folder structure as ``source``, ``mask``,
  ``GT``, ``meta.json``", where meta.json records each triple as
  ``{"source": "source/xxx.png", "mask": "mask/xxx.png", "GT": "GT/xxx.png"}``; the repository's
  loader (myutils/img_util.py, ``meta_to_inpaint_dataset_format``) reads meta.json with ``json.load``
  as a list of such objects, paths relative to the folder of meta.json. The only object-class field
  anywhere in that code is ``item["text"]["label"]["name"]`` (``meta_to_dataset_format``).

The inside of ``testset_RORem.tar.gz`` is not listed in any public page or file the search tools
hold, so this reader takes the dataset layout the README documents, with the ground truth optional,
and looks for it anywhere below ROOT (the archive's top folder, and one folder per resolution as the
paper describes, are both handled). A *set* is a folder holding either

    meta.json              a JSON list (or JSON lines, as the README prints them) of
                           {"source": <path>, "mask": <path>[, "GT": <path>]}, paths relative to it
    source/<name>.<ext>    or, without meta.json: the input images,
    mask/<name>.<ext>      their masks (white = object to remove), same <name>,
    GT/<name>.<ext>        and optionally the ground truth, same <name>.

meta.json wins where both are present, and folders below a set are not searched (its meta.json may
name files in them). Sets are taken in natural order of their path (``512`` before ``1024``), their
examples in natural order of key. Keys are ``<set path>_<name>``
(``magiceraser.keys.file_name_key``; just ``<name>`` for a set at ROOT itself), ``<name>`` being the
source file's name without extension. Meta: ``"source"`` (input path), ``"subset"`` (the set's path
below ROOT, when not ROOT), ``"object_class"`` (where an entry carries ``text.label.name``).

No ground truth (no ``GT/`` folder, no ``"GT"`` entry): ``target=None``. A ``GT/`` folder or a
``"GT"`` entry whose file is missing: the pair is kept without a target, flagged
``"target_missing"``. A missing source or mask file: ``"missing_file"``; a meta.json entry without
``source``/``mask`` paths: ``"bad_metadata"``; unreadable files, size mismatches and empty masks as in
:mod:`magiceraser.evaluation.pairs.folders`. A meta.json that is not JSON raises ``ValueError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from magiceraser.evaluation.pairs import PairOrSkip, PairSkip
from magiceraser.evaluation.pairs.folders import image_files, iter_matched_by_name, natural_key, read_pair
from magiceraser.keys import file_name_key

META_NAME = "meta.json"
_LAYOUT = (
    "per set, source/<name>.png and mask/<name>.png (GT/<name>.png optional), or a meta.json listing "
    '{"source": ..., "mask": ...[, "GT": ...]} (the dataset layout of github.com/leeruibin/RORem)'
)


def iter_rorem(root: str | Path) -> Iterator[PairOrSkip]:
    """RORem test-set pairs (see the module docstring for the layout and what it rests on)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"RORem root {root} does not exist: point dataset.path at the extracted testset_RORem.tar.gz; expected {_LAYOUT}"
        )
    sets = _find_sets(root)
    if not sets:
        raise FileNotFoundError(f"no RORem test set under {root}: expected {_LAYOUT}")
    for folder in sets:
        rel = folder.relative_to(root).as_posix()
        prefix, extra = ("", {}) if rel == "." else (rel + "/", {"subset": rel})
        if (folder / META_NAME).is_file():
            yield from _iter_meta_set(folder, prefix, extra)
        else:
            gt = next((folder / n for n in ("GT", "gt") if (folder / n).is_dir()), None)
            yield from iter_matched_by_name(image_files(folder / "source"), folder / "mask", gt, prefix, extra)


def _is_set(folder: Path) -> bool:
    return (folder / META_NAME).is_file() or ((folder / "source").is_dir() and (folder / "mask").is_dir())


def _find_sets(root: Path) -> list[Path]:
    """Folders at or below ``root`` that hold a set, in natural order of path. Folders below a set are not
    searched: its meta.json may name files there, which must not be read a second time."""
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        folder = Path(dirpath)
        if _is_set(folder):
            found.append(folder)
            dirnames[:] = []
        else:
            dirnames.sort(key=natural_key)
    return found


def _load_meta(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        try:  # the README prints one object per line
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"{path} is neither JSON nor JSON lines ({exc}): expected a list of "
                             '{"source": ..., "mask": ...[, "GT": ...]} objects') from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{\"source\", \"mask\"[, \"GT\"]}} objects, got {type(data).__name__}")
    return data


def _object_class(item: dict) -> str | None:
    text = item.get("text")
    label = text.get("label") if isinstance(text, dict) else None
    name = label.get("name") if isinstance(label, dict) else None
    return name if isinstance(name, str) and name else None


def _iter_meta_set(folder: Path, prefix: str, extra: dict) -> Iterator[PairOrSkip]:
    meta_path = folder / META_NAME
    records: list[tuple[str, PairSkip | dict]] = []
    for i, item in enumerate(_load_meta(meta_path)):
        fields = item if isinstance(item, dict) else {}
        source, mask, gt = fields.get("source"), fields.get("mask"), fields.get("GT")
        if not (isinstance(source, str) and source and isinstance(mask, str) and mask) or not (gt is None or isinstance(gt, str)):
            key = file_name_key(f"{prefix}{META_NAME}_entry_{i}")
            detail = f"{meta_path} entry {i}: needs \"source\" and \"mask\" paths (and a path or nothing as \"GT\"), got {item!r:.200}"
            records.append((key, PairSkip(key, "bad_metadata", detail)))
        else:
            records.append((file_name_key(prefix + Path(source).stem), {"source": source, "mask": mask, "GT": gt, "item": item}))
    seen: set[str] = set()
    for key, record in sorted(records, key=lambda r: natural_key(r[0])):
        if isinstance(record, PairSkip):
            yield record
            continue
        if key in seen:
            yield PairSkip(key, "duplicate_key", f"{meta_path}: {record['source']} gives the key {key!r} of an earlier entry")
            continue
        seen.add(key)
        source, mask = folder / record["source"], folder / record["mask"]
        absent = [p for p in (source, mask) if not p.is_file()]
        if absent:
            yield PairSkip(key, "missing_file", f"{meta_path} names {', '.join(map(str, absent))}, not found")
            continue
        pair_meta: dict[str, Any] = {"source": str(source), **extra}
        object_class = _object_class(record["item"])
        if object_class is not None:
            pair_meta["object_class"] = object_class
        target = None
        if record["GT"]:
            target = folder / record["GT"]
            if not target.is_file():
                target = None
                pair_meta["target_missing"] = True
        yield read_pair(key, source, mask, target, pair_meta)

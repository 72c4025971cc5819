"""Any OLRD WebDataset shard set as evaluation pairs: input ``blended.*``, mask ``mask.png``,
target ``original.*`` per sample (and ``object_class`` / ``tags`` from its ``json``, when present).

Tar members are grouped into samples by ``magiceraser.olrd_samples.read_tar_samples``, the reader
the trainer uses, so a shard means the same thing to both. The members are then checked and
decoded here rather than by ``decode_olrd``: the trainer's decoder requires a ``json`` member with
typed ``tags``/``caption`` and has reason codes of its own, whereas an evaluation pair needs only
the three images, and its skip records (``missing_file``, ``size_mismatch``, ``bad_json``,
``bad_shard``, the decoders' reasons) are what existing ``skipped.jsonl`` files and users know.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from glob import glob
from pathlib import Path

from magiceraser.evaluation.pairs import PairOrSkip, PairSkip, check_pair
from magiceraser.imageio import ImageDecodeError, decode_image, decode_mask
from magiceraser.keys import file_name_key


def shard_paths(pattern: str | list[str]) -> list[Path]:
    """Shard files from a glob, a directory (all ``*.tar`` in it) or a list of them, sorted."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    out: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            out += sorted(p.glob("*.tar"))
        else:
            out += sorted(Path(x) for x in glob(pat))
    if not out:
        raise FileNotFoundError(f"no OLRD shards match {pattern!r}: give a directory, a glob like 'olrd/olrd-*.tar' or a list")
    return out


def _shard_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of every sample of one shard, through the shared OLRD reader.

    Read in full before any pair is built (``strict``): a shard that cannot be read to its end is
    one ``bad_shard`` skip, never a silent part of its pairs.
    """
    from magiceraser.olrd_samples import read_tar_samples

    return [(sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")})
            for sample in read_tar_samples([str(path)], strict=True)]


def _read_error(exc: OSError) -> str:
    """What went wrong reading a shard, for the skip record: the tar error itself, without the
    stream objects webdataset appends to its arguments (their reprs name no file and no cause)."""
    cause = exc.__cause__
    if cause is None or isinstance(cause, OSError) or not cause.args:
        return str(exc)
    return str(cause.args[0]).split(" @ <", 1)[0]


def iter_olrd_shards(pattern: str | list[str]) -> Iterator[PairOrSkip]:
    """OLRD samples: input ``blended.*``, mask ``mask.png``, target ``original.*``."""
    for path in shard_paths(pattern):
        try:
            samples = _shard_samples(path)
        except OSError as exc:
            yield PairSkip(file_name_key(path.name), "bad_shard", f"{path}: {_read_error(exc)}")
            continue
        for key, files in samples:
            k = file_name_key(key)
            blended = next((files[e] for e in ("blended.jpg", "blended.png") if e in files), None)
            original = next((files[e] for e in ("original.jpg", "original.png") if e in files), None)
            if blended is None or original is None or "mask.png" not in files:
                yield PairSkip(k, "missing_file", f"{path.name}:{key} lacks blended/original/mask.png (has {sorted(files)})")
                continue
            try:
                meta = json.loads(files["json"]) if "json" in files else {}
                yield check_pair(k, decode_image(blended), decode_mask(files["mask.png"]), decode_image(original),
                                 {"source": f"{path.name}:{key}", **{m: meta[m] for m in ("object_class", "tags") if m in meta}})
            except ImageDecodeError as exc:
                yield PairSkip(k, exc.reason, str(exc))
            except json.JSONDecodeError as exc:
                yield PairSkip(k, "bad_json", str(exc))

"""Any OLRD WebDataset shard set as evaluation pairs: input ``blended.*``, mask ``mask.png``,
target ``original.*`` per sample (and ``object_class`` / ``tags`` from its ``json``, when present)."""

from __future__ import annotations

import json
import tarfile
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


def _iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    # WebDataset convention: key = member path up to the first dot of its base name; members of a
    # sample are contiguous in the tar.
    current: str | None = None
    files: dict[str, bytes] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            dirname, _, base = member.name.rpartition("/")
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = f"{dirname}/{stem}" if dirname else stem
            if key != current:
                if current is not None:
                    yield current, files
                current, files = key, {}
            fh = tar.extractfile(member)
            files[ext] = fh.read() if fh is not None else b""
    if current is not None:
        yield current, files


def iter_olrd_shards(pattern: str | list[str]) -> Iterator[PairOrSkip]:
    """OLRD samples: input ``blended.*``, mask ``mask.png``, target ``original.*``."""
    for path in shard_paths(pattern):
        try:
            samples = list(_iter_tar_samples(path))
        except (tarfile.TarError, OSError) as exc:
            yield PairSkip(file_name_key(path.name), "bad_shard", f"{path}: {exc}")
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

"""Directory mode of ``magiceraser erase``: pairing by stem, content fingerprints, the resumable report.

Pairing. Images and masks are matched by file stem (``a.jpg`` ↔ ``a.png``). Two images or two
masks with one stem (``a.png`` and ``a.jpg``; compared ignoring case, as on a case-insensitive
disk) are refused before any work: their results would share ``a.{format}``, or which mask is
meant would be a guess. Masks without an image are reported (``orphan_masks``). With ``--classes``
every image is an item without a mask file (its mask comes from the segmenter).

Report. ``OUT/erase_report.json`` is written atomically before the first item (every item
``not_done`` with reason ``pending``), after every erased item, and at the end. So a killed run
(even SIGKILL) leaves a valid report of what was finished; Ctrl-C or SIGTERM marks the rest
``interrupted``. Every item ends in exactly one of ``erased``, ``skipped`` (with ``reason``,
``message`` and, for an exception, ``error_type``) or ``not_done``.

Resume. Each erased record holds a fingerprint: sha256 of the image bytes, the mask bytes and the
erase settings (every config field that can change a result, plus a listing of local model
files). A rerun reuses a record only when the record of that image file name has a matching
fingerprint *and* the result file still has the recorded sha256 (copies of one image share a
fingerprint, so the path tells their records apart); anything else (changed image, mask, config or model, edited or deleted
result) is erased again. File names alone never decide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magiceraser.fingerprint import digest
from magiceraser.fingerprint import file_sha256 as sha256_file
from magiceraser.imageio import IMAGE_SUFFIXES
from magiceraser.pipelines.erase.checks import EraseUserError
from magiceraser.pipelines.erase.config import EraseConfig

__all__ = ["REPORT_NAME", "Pair", "classes_key", "BatchPlan", "plan_batch", "settings_key", "fingerprint", "sha256_file", "BatchReport"]

REPORT_NAME = "erase_report.json"
REPORT_VERSION = 2  # 1: the unversioned report of earlier releases (no fingerprints, never reused)
ERASER_VERSION = 1  # bump when a code change alters results, so old records are not reused
# Fields that cannot change a result: left out of the fingerprint so that changing them reuses results.
NOT_IN_FINGERPRINT = ("num_threads", "save_inputs")


@dataclass(frozen=True)
class Pair:
    """One image, its mask (None with ``--classes``: the mask is built from the segmentation) and where its result goes."""

    image: Path
    mask: Path | None
    out: Path
    classes: tuple[str, ...] = ()
    class_dilation: int = 0

    def mask_bytes(self) -> bytes:
        """What stands for the mask in the fingerprint: the mask file's bytes, or the class list and dilation."""
        return self.mask.read_bytes() if self.mask is not None else classes_key(self.classes, self.class_dilation)


def classes_key(classes: tuple[str, ...], dilation: int) -> bytes:
    """The fingerprint's stand-in for a mask built from classes (the segmenter is in the settings key)."""
    return f"classes:{','.join(classes)};dilation={dilation}".encode()


@dataclass
class BatchPlan:
    pairs: list[Pair]
    no_mask: list[Path]  # images without a mask
    orphan_masks: list[Path]  # masks without an image


def list_images(folder: Path) -> list[Path]:
    """Image files (by extension) directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _by_stem(files: Iterable[Path]) -> tuple[dict[str, Path], list[list[Path]]]:
    """Files keyed by stem, and the groups of files that share a stem ignoring case."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.stem.casefold(), []).append(f)
    clashes = [g for g in groups.values() if len(g) > 1]
    return {f.stem: f for g in groups.values() for f in g}, clashes


def _clash_error(what: str, folder: Path, clashes: list[list[Path]], why: str) -> EraseUserError:
    shown = "; ".join(" and ".join(p.name for p in g) for g in clashes[:5])
    more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
    return EraseUserError(
        f"{len(clashes)} stem(s) are shared by several {what} in {folder}: {shown}{more}; {why}, so rename or remove all but one"
    )


def plan_batch(image_dir: Path, mask_dir: Path | None, out_dir: Path, fmt: str, classes: tuple[str, ...] = ()) -> BatchPlan:
    """Pair images with masks by stem (or, without a mask folder, every image with ``classes``); refuse stem clashes."""
    images = list_images(image_dir)
    if not images:
        raise EraseUserError(f"--image {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}): check the folder")
    image_stems, clashes = _by_stem(images)
    if clashes:
        raise _clash_error("images", image_dir, clashes, f"each result is written as {{stem}}.{fmt} and one would replace another")
    if mask_dir is None:
        pairs = [Pair(img, None, out_dir / f"{s}.{fmt}", classes) for s, img in image_stems.items()]
        return BatchPlan(sorted(pairs, key=lambda p: p.image.name), [], [])
    masks = list_images(mask_dir)
    mask_stems, clashes = _by_stem(masks)
    if clashes:
        raise _clash_error("masks", mask_dir, clashes, "masks are matched to images by stem and it is unclear which one is meant")
    pairs = [Pair(img, mask_stems[s], out_dir / f"{s}.{fmt}") for s, img in image_stems.items() if s in mask_stems]
    no_mask = [img for s, img in image_stems.items() if s not in mask_stems]
    orphans = [m for s, m in mask_stems.items() if s not in image_stems]
    return BatchPlan(sorted(pairs, key=lambda p: p.image.name), sorted(no_mask), sorted(orphans))


def _model_listing(name: str | None) -> Any:
    """What a model setting points at: for a local file or folder a listing (path, size, mtime) of its files,
    so a retrained ``trained_dir`` under the same name changes the fingerprint; else the id itself."""
    if not name:
        return None
    p = Path(name).expanduser()
    if p.is_file():
        st = p.stat()
        return [[p.name, st.st_size, st.st_mtime_ns]]
    if p.is_dir():
        return [[str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(p.rglob("*")) if f.is_file()]
    return name


def settings_key(cfg: EraseConfig) -> str:
    """sha256 of everything besides the two inputs that decides a result: config fields, model files, code version."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_FINGERPRINT}
    models = {k: _model_listing(getattr(cfg, k)) for k in ("base_model", "trained_dir", "segmenter", "lama_path")}
    return digest({"eraser_version": ERASER_VERSION, "config": fields, "models": models})


def fingerprint(image_bytes: bytes, mask_bytes: bytes, settings: str) -> str:
    """sha256 over (image bytes, mask bytes, settings key), length-prefixed so that boundaries count."""
    h = hashlib.sha256()
    for part in (image_bytes, mask_bytes, settings.encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


@dataclass
class BatchReport:
    """``erase_report.json``: one record per image, rewritten atomically as items finish."""

    path: Path
    config: dict[str, Any]
    settings: str
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # image path -> record with "status"
    orphan_masks: list[dict[str, str]] = field(default_factory=list)
    status: str = "running"
    min_interval_s: float = 1.0  # unforced writes (skips) at most this often: thousands of fast skips stay cheap
    _last_write: float = 0.0

    @staticmethod
    def reusable(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
        """Erased records of an earlier report by (image file name, fingerprint); {} for a missing, foreign or unreadable one.

        The name is part of the key: images with the same content (copies) have the same
        fingerprint, and each has a result of its own to find again. The name, not the path as
        typed: ``--image imgs`` and ``--image /abs/imgs`` are the same folder (names are unique in it).
        """
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(old, dict) or old.get("version") != REPORT_VERSION:
            return {}
        return {(Path(str(r.get("image"))).name, r["fingerprint"]): r for r in old.get("erased", [])
                if isinstance(r, dict) and r.get("fingerprint")}

    def set(self, image: Path, status: str, **fields: Any) -> None:
        """Record ``image`` as erased / skipped / not_done (later calls replace earlier ones)."""
        self.records[str(image)] = {"status": status, "image": str(image), **fields}

    def interrupt(self) -> int:
        """Mark every item still pending as interrupted; returns how many."""
        pending = [r for r in self.records.values() if r["status"] == "not_done"]
        for r in pending:
            r["reason"] = "interrupted"
            r["message"] = "the run was interrupted before this item finished; rerun the same command to complete it"
        self.status = "interrupted"
        return len(pending)

    def counts(self) -> dict[str, int]:
        out = {"erased": 0, "reused": 0, "skipped": 0, "failed": 0, "not_done": 0}
        for r in self.records.values():
            out[r["status"]] += 1
            out["reused"] += bool(r.get("reused"))
            out["failed"] += r.get("reason") == "error"
        out["orphan_masks"] = len(self.orphan_masks)
        return out

    def as_json(self) -> dict[str, Any]:
        def listed(status: str) -> list[dict[str, Any]]:
            return [{k: v for k, v in r.items() if k != "status"} for r in self.records.values() if r["status"] == status]

        return {
            "version": REPORT_VERSION, "status": self.status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": self.counts(), "settings": self.settings, "config": self.config,
            "erased": listed("erased"), "skipped": listed("skipped"), "not_done": listed("not_done"),
            "orphan_masks": self.orphan_masks,
        }

    def write(self, force: bool = True) -> None:
        """Atomically replace the report on disk (a reader or a killed run never sees half a file)."""
        from magiceraser.atomic import atomic_write_json

        now = time.monotonic()
        if not force and now - self._last_write < self.min_interval_s:
            return
        atomic_write_json(self.path, self.as_json())
        self._last_write = now

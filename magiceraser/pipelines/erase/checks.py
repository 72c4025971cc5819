"""Checks ``magiceraser erase`` runs before any work: a user's mistake must cost a line, not a batch.

Everything here only looks (stat, access, directory listings, small JSON files); nothing is
created or loaded, so a refused command leaves the disk as it was. Each failed check raises
:class:`EraseUserError` with one sentence naming the flag, key or file and what to do; the CLI
prints it on one line and exits 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from magiceraser.errors import UserError, exception_chain
from magiceraser.imageio import OUTPUT_FORMATS, format_for_suffix
from magiceraser.models.hub import is_hub_id
from magiceraser.pipelines.erase.config import EraseConfig

__all__ = [
    "EraseUserError", "SingleTarget", "check_input", "check_inputs_pair", "check_writable", "single_target",
    "check_single_outputs", "check_batch_out", "check_models", "hub_failure",
]

WRITABLE = ", ".join(OUTPUT_FORMATS)


class EraseUserError(UserError):
    """A mistake the user can fix (a path, a name clash, a model folder): one line, exit code 2, no traceback."""


def check_input(path: Path, flag: str) -> None:
    """``path`` exists and can be read (a directory must also be listable)."""
    if not path.exists():
        raise EraseUserError(f"{flag} {path} does not exist")
    need = os.R_OK | os.X_OK if path.is_dir() else os.R_OK
    if not os.access(path, need):
        raise EraseUserError(f"{flag} {path} is not readable by this user: fix its permissions or copy it")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (symlinks and hard links included; a missing path by its resolved name)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _inside(child: Path, parent: Path) -> bool:
    """Whether ``child`` is ``parent`` or lies under it, after resolving symlinks."""
    return child.resolve().is_relative_to(parent.resolve())


def check_inputs_pair(image: Path, mask: Path) -> None:
    """--image and --mask are of one kind (two files or two directories) and not the same path."""
    if image.is_dir() != mask.is_dir():
        raise EraseUserError("--image and --mask must both be files or both be directories")
    if _same_file(image, mask):
        raise EraseUserError(f"--image and --mask are the same {'directory' if image.is_dir() else 'file'} ({image}): give the masks separately")


def check_writable(path: Path, flag: str, as_dir: bool) -> None:
    """``path`` can be created (or replaced) as a directory (``as_dir``) or a file.

    The nearest existing ancestor must be a writable directory: a file there (``--out a.txt/b``)
    would otherwise surface as a FileExistsError traceback after the models were loaded.
    """
    if path.exists():
        if as_dir and not path.is_dir():
            raise EraseUserError(f"{flag} {path} is a file, not a directory: remove it or choose another {flag}")
    anc = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not anc.is_dir():
        raise EraseUserError(f"{flag} {path}: {anc} is a file, so nothing can be created under it; choose another {flag}")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise EraseUserError(f"{flag} {path}: {anc} is not writable by this user; choose another {flag}")


@dataclass(frozen=True)
class SingleTarget:
    """Where a single image's result goes: a file of format ``fmt``, or a directory (``fmt`` None)."""

    path: Path
    fmt: str | None

    @property
    def is_file(self) -> bool:
        return self.fmt is not None


def single_target(out: Path) -> SingleTarget:
    """Decide from ``--out`` whether the result is one file (its extension names a writable format) or a directory.

    An extension PIL knows but that is not written here (``.gif``, ``.bmp``...) is refused rather
    than written under a wrong name; other names (``out``, ``run.v2``) are directories.
    """
    if out.is_dir():
        return SingleTarget(out, None)
    fmt = format_for_suffix(out.suffix)
    if fmt is not None:
        return SingleTarget(out, fmt)
    from PIL import Image

    if out.suffix.lower() in Image.registered_extensions():
        raise EraseUserError(f"--out {out}: {out.suffix} results are not written; name the result {WRITABLE}, or give a directory")
    return SingleTarget(out, None)


def check_single_outputs(target: SingleTarget, image: Path, mask: Path, save_inputs: bool) -> None:
    """No file the single-image mode writes is its own input, and its location is writable."""
    if target.is_file:
        written = [target.path]
    else:
        written = [target.path / n for n in ("result.png", "erase.json")]
        written += [target.path / n for n in ("input.png", "mask.png")] if save_inputs else []
    for w in written:
        for p, flag in ((image, "--image"), (mask, "--mask")):
            if _same_file(w, p):
                raise EraseUserError(f"--out {target.path} would overwrite {flag} {p}: write the result somewhere else")
    check_writable(target.path, "--out", as_dir=not target.is_file)


def check_batch_out(out: Path, image_dir: Path, mask_dir: Path) -> None:
    """The output directory is neither an input directory nor inside one, and can be created.

    Results written into an input folder would replace inputs (``--out IMAGES``) or be matched as
    inputs by the next run (``--out IMAGES/erased``).
    """
    for d, flag in ((image_dir, "--image"), (mask_dir, "--mask")):
        if _inside(out, d):
            where = "is" if out.resolve() == d.resolve() else "is inside"
            raise EraseUserError(f"--out {out} {where} the {flag} directory {d}: results would mix with inputs; choose a separate --out")
    check_writable(out, "--out", as_dir=True)


def _check_model_dir(key: str, name: str | None, marker: str) -> None:
    """A local model folder named by config ``key`` exists and holds ``marker`` (Hugging Face ids are left to the loader)."""
    if not name or (is_hub_id(name) and not Path(name).exists()):
        return
    p = Path(name).expanduser()
    if not p.is_dir():
        raise EraseUserError(f"{key}: {name} does not exist (relative to {Path.cwd()}); set {key}= to a model directory or a Hugging Face id")
    if not (p / marker).is_file():
        raise EraseUserError(f"{key}: {name} is not a model directory (no {marker}); set {key}= to the folder that holds {marker}")


def check_models(cfg: EraseConfig) -> None:
    """The model folders and files the config names can be found, before minutes of loading start."""
    _check_model_dir("base_model", cfg.base_model, "model_index.json")
    if cfg.segmenter:
        _check_model_dir("segmenter", cfg.segmenter, "config.json")
    if cfg.trained_dir:
        from magiceraser.artifacts import read_trained_output

        try:
            read_trained_output(cfg.trained_dir)
        except (OSError, ValueError) as exc:
            raise EraseUserError(f"trained_dir: {exc}") from exc
    if cfg.content_init == "lama" and cfg.lama_path and not Path(cfg.lama_path).is_file():
        raise EraseUserError(f"lama_path: {cfg.lama_path} is not a file; set lama_path= to the Big-LaMa TorchScript file (big-lama.pt)")


# What huggingface_hub and diffusers say when a Hub id can be neither downloaded nor found in the cache.
_HUB_UNREACHABLE = ("not fully cached locally", "couldn't connect to", "outgoing traffic has been disabled",
                    "cannot find the requested files in the local cache", "offline mode is enabled")
_HUB_ERRORS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "HfHubHTTPError")


def hub_failure(exc: BaseException, models: dict[str, str | None]) -> EraseUserError | None:
    """A model load that failed because a Hugging Face id could not be downloaded: one line naming the key.

    ``models`` maps config keys to their values (``base_model``, ``segmenter``, ...). The libraries'
    own message suggests ``local_files_only=False`` and "the stacktrace above", neither of which a
    command-line user has; this says what to set instead. None when ``exc`` is another failure.
    """
    chain = list(exception_chain(exc))
    text = " ".join(str(x) for x in chain).lower()
    if not (any(m in text for m in _HUB_UNREACHABLE)
            or any(cls.__name__ in _HUB_ERRORS for x in chain for cls in type(x).__mro__)):
        return None
    hub = {k: v for k, v in models.items() if v and is_hub_id(v)}
    if not hub:
        return None
    key, value = next(((k, v) for k, v in hub.items() if v.lower() in text), next(iter(hub.items())))
    return EraseUserError(
        f"{key}: {value!r} could not be downloaded from the Hugging Face Hub (no connection, and it is not in the local "
        f"cache); download it where there is internet (huggingface-cli download {value} --local-dir DIR) and set {key}=DIR, "
        "or try the demo's tiny models: make demo, then --config configs/erase/demo.yaml")

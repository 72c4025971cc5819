"""Whether a model name from a config means the Hugging Face Hub or a local path.

One rule for every config key that names a model (``base_model``, ``segmenter``, ``captioner.model``,
...): a name the Hub could not hold as a repo id (``name`` or ``owner/name``, as
``huggingface_hub.utils.validate_repo_id`` defines it) can only be a local path. A name that could be
either is first looked for on disk by the loaders, so callers check an existing folder of that name
as a local model too.
"""

from __future__ import annotations

__all__ = ["is_hub_id"]


def is_hub_id(name: str) -> bool:
    """True when ``name`` is a valid Hugging Face repo id (it may still also name a local folder)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True

"""``storage_options`` as the records of a job hold them: every secret masked.

The jobs pass a config's ``storage_options`` to fsspec unchanged, and record the settings they ran
with in their output (job.json, cache.json, train_config.yaml): whoever can read the output must
not learn the credentials that wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SECRET_RE = re.compile(r"key|secret|token|password|passwd|credential|session", re.IGNORECASE)


def public_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` with every secret-looking value (keys, tokens, passwords) masked.

    For the records a job writes into its output (job.json, cache.json): who can read the shards
    must not learn the credentials that wrote them.
    """
    out: dict[str, Any] = {}
    for k, v in (options or {}).items():
        if isinstance(v, Mapping):
            out[k] = public_options(v)
        elif _SECRET_RE.search(str(k)) and "url" not in str(k).lower():
            out[k] = "***"
        else:
            out[k] = v
    return out

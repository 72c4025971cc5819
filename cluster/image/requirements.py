"""Print the requirements of pyproject.toml (``[project].dependencies`` plus the named extras), one per line.

The image installs them in a layer of its own before the package's source is copied in, so that a
code change does not reinstall every dependency:

    python cluster/image/requirements.py pyproject.toml vllm,s3 > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: str) -> list[str]:
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    wanted = [e.strip() for e in extras.split(",") if e.strip()]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in wanted if e not in optional]
    if unknown:
        raise SystemExit(f"requirements.py: unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    out = list(project.get("dependencies", []))
    for extra in wanted:
        out += [r for r in optional[extra] if r not in out]
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: requirements.py PYPROJECT EXTRAS")
    print("\n".join(requirements(sys.argv[1], sys.argv[2])))

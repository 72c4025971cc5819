"""``python -m magiceraser.install_check``: is this environment one the project runs in?

The one check that matters is torchvision. The project never needs it, but the ``vllm`` extra brings
it (vLLM depends on it), and a torchvision that does not match the installed torch breaks
``import transformers`` image paths and torchmetrics at import time ("operator torchvision::nms does
not exist"). That happens on a CPU-only machine, where PyPI's torchvision is built for the CUDA torch.
On a GPU node the ``vllm`` extra installs the torchvision built for the same torch, and it works.

So the check is not "torchvision absent" but "torchvision absent, or working with this torch": it
imports torchvision and runs one of its compiled operators. It exits 0 when the environment is
usable and 2 with one line saying what to do when it is not (``make env`` and the container image
recipe both run it after installing).
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["torchvision_problem", "main"]


def torchvision_problem() -> str | None:
    """None when torchvision is absent or works with the installed torch; else what is wrong."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    import torch

    try:
        import torchvision
        from torchvision.ops import nms

        nms(torch.zeros((1, 4)), torch.ones(1), 0.5)  # a compiled operator: fails when built for another torch
    except Exception as exc:  # whatever the mismatch raises (RuntimeError, ImportError, OSError)
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
        return (f"torchvision is installed but does not work with torch {torch.__version__} ({build}): "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}; "
                "this project never needs it: `pip uninstall -y torchvision` (on a CPU-only machine, leave out the "
                "vllm extra, whose torchvision is built for CUDA torch)")
    del torchvision
    return None


def main() -> int:
    problem = torchvision_problem()
    if problem:
        print(f"magiceraser install check: {problem}", file=sys.stderr)
        return 2
    print("magiceraser install check: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

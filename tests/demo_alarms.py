"""What the user must never see in ``magiceraser demo``'s output: the alarms issue 19 saw in every run, each
fixed at its source or silenced with its reason in ``magiceraser/quiet.py``. One demo run checks them:
the image test's (inside the built image, tests/test_image.py) where buildah can build it, else the
host's (tests/test_quiet.py)."""

from __future__ import annotations

import os
import shutil

ALARMS = (
    "requires torchvision", "Install torchvision", "No LoRA keys associated", "multivariate normal",
    "should be kept in float32", "core_worker.cc", "Traceback",
)


def alarms_in(output: str) -> dict[str, list[str]]:
    """Alarm -> the first two lines that carry it (empty dict when none does)."""
    found = {alarm: [line for line in output.splitlines() if alarm in line][:2] for alarm in ALARMS}
    return {k: v for k, v in found.items() if v}


def image_test_runs_the_demo() -> bool:
    """Whether tests/test_image.py can build the image and run the demo in it here (then it checks the alarms)."""
    return all(shutil.which(t) for t in ("buildah", "debootstrap")) and os.geteuid() == 0

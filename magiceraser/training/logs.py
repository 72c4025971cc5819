"""Console logging of training processes: rank 0 at INFO, the others at WARNING, rank in every line.

A leaf module: the entry point (``train.py``) and the Ray Train workers (``ray_launch.py``) both
set logging up, and neither imports the other for it.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(rank: int = 0) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("magiceraser").setLevel(level)

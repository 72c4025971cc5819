"""A preemption signal is a message: "save and leave within the grace period".

Kubernetes sends SIGTERM to a pod 30 s (``terminationGracePeriodSeconds``) before it kills it;
SLURM sends the signal ``--signal=USR1@60`` names before the time limit or a preemption; torchrun
forwards the signal it receives to its workers. :class:`PreemptionWatcher` turns each configured
signal into a flag and nothing else: the handler does no I/O and takes no lock, so it cannot
interrupt a checkpoint save half-way, and a second signal during the save changes nothing.

The training loop reads the flag once per optimizer step and adds it to the gradient all-reduce
it already makes (one more float), so every process learns in the same step that *some* process
was signalled, although each received the signal at another moment. They then save one
checkpoint together and leave with :data:`PREEMPTED_EXIT_CODE`.

:data:`PREEMPTED_EXIT_CODE` is 75, ``EX_TEMPFAIL`` of ``sysexits.h`` ("a temporary failure; the
user is invited to retry"): an orchestrator can tell "preempted, restart me" from a failure
(Kubernetes ``podFailurePolicy`` ``onExitCodes``, a SLURM script's ``scontrol requeue``), and
torchrun restarts on any non-zero status (``--max_restarts``).

Ctrl-C (SIGINT, which a terminal sends to the whole process group) is watched the same way
whatever ``preemption.signals`` says: the processes finish the step, save, and leave with
:data:`INTERRUPTED_EXIT_CODE` (130, the shell's status for SIGINT) and a line naming the command
that continues. A second Ctrl-C does not wait: it raises ``KeyboardInterrupt`` at once (every
checkpoint file is written to a temporary name first, so nothing half-written is left), and the
command reports the newest checkpoint that exists.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType

from magiceraser.errors import INTERRUPTED_EXIT_CODE

log = logging.getLogger(__name__)

#: Exit status of a process that saved a checkpoint because it was asked to leave (EX_TEMPFAIL).
PREEMPTED_EXIT_CODE = 75
#: The interactive stop signal, watched in addition to ``preemption.signals``.
INTERRUPT = "SIGINT"


class Preempted(Exception):
    """Raised by the training loop after the checkpoint of a preemption is saved."""

    def __init__(self, step: int, signal_name: str, checkpoint: str):
        super().__init__(f"preempted ({signal_name}) at step {step}; checkpoint {checkpoint}")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint

    @property
    def interrupted(self) -> bool:
        """Ctrl-C rather than an orchestrator's signal (the exit status is then 130, not 75)."""
        return self.signal_name.split()[0] == INTERRUPT

    @property
    def exit_code(self) -> int:
        return INTERRUPTED_EXIT_CODE if self.interrupted else PREEMPTED_EXIT_CODE


def watched_signals(names: Iterable[str]) -> list[str]:
    """The preemption signals plus Ctrl-C's (module docstring)."""
    names = list(names)
    return names if INTERRUPT in names else [*names, INTERRUPT]


def signal_numbers(names: Iterable[str]) -> list[signal.Signals]:
    return [signal.Signals[name] for name in names]


class PreemptionWatcher:
    """Sets :attr:`requested` when one of ``names`` arrives; restores the previous handlers on :meth:`close`.

    Python runs signal handlers in the main thread only; where this object is made on another
    thread (a Ray Train worker runs the training function in one), it installs nothing and
    says so: there the launcher's own mechanisms apply (``FailureConfig``).
    """

    def __init__(self, names: Iterable[str]):
        self.signals = signal_numbers(names)
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}
        self.installed = False

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if name == INTERRUPT and self.received == INTERRUPT:
            raise KeyboardInterrupt  # the second Ctrl-C: leave now (the module docstring)
        if self.received is None:
            self.received = name
        # Nothing else here: the flag is read between optimizer steps (see the module docstring).

    def request(self, reason: str) -> None:
        """Ask for a stop from elsewhere (a Ray worker relays its driver's signal this way)."""
        if self.received is None:
            self.received = reason

    def install(self) -> PreemptionWatcher:
        if not self.signals:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.debug("not on the main thread: %s keep their default action here", ", ".join(s.name for s in self.signals))
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self.installed = True
        return self

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        self.installed = False

    def __enter__(self) -> PreemptionWatcher:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def signals_ignored(signals: Iterable[signal.Signals]) -> Iterator[None]:
    """While a run that was told to stop cleans up (loader, W&B, locks): the watched signals are ignored.

    The stop is already under way, so a further Ctrl-C or SIGTERM cannot be acted on sooner; it
    could only cut the cleanup short and leave the folder's lock behind. Only on the main thread
    (where Python handles signals); elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_in_worker(names: Iterable[str]) -> None:
    """In a DataLoader worker process: ignore the preemption signals.

    A signal sent to the whole process group (``kill -TERM -PGID``, systemd, ``timeout``) reaches
    the loader's workers too; they must keep serving batches until the main process has finished
    its step and saved, then the loader shuts them down.
    """
    for sig in signal_numbers(names):
        signal.signal(sig, signal.SIG_IGN)

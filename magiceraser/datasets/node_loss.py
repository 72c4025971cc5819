"""What the OLRD driver knows about losing part of a Ray cluster: which errors mean it, and a watch
for the one loss Ray does not report.

Ray reports most losses as exceptions (:func:`is_cluster_fault`), which the driver answers by
re-planning the unfinished shards on the nodes still alive. One loss it never reports: a model
actor that died with its node is *restarted* (``max_restarts``), and the batch it was running is
queued again on it (``max_task_retries``); when no live node has room for the restarted actor
(a fixed-size cluster that lost a node, every CPU held by the surviving actors), the actor stays
``RESTARTING`` and its batch waits for it forever. Whether the retries run out before Ray marks
the actor as restarting is a race, so the command sometimes ended, sometimes hung.

:class:`LostActorWatch` closes it: while a pipeline runs, it polls the cluster's node and actor
tables; once a node that was alive when the pipeline started is dead and one of this job's
pipeline actors has been restarting for ``timeout_s`` without any node having taken it (Ray starts
a restarted actor in a new worker process on a node with room, then runs its constructor: an
actor loading its models there is left alone), it kills that actor for good. Its queued
batch then fails with ``ActorDiedError``, a cluster fault like any other, and the driver
re-plans. ``timeout_s = 0`` waits for the cluster to place the actor again (an autoscaler that
replaces lost nodes).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from magiceraser.errors import exception_chain

# Ray's errors for work lost with its node, process or object (not a bug in a stage): worth a rerun.
CLUSTER_FAULTS = ("ActorUnavailableError", "ActorDiedError", "RayActorError", "NodeDiedError", "ObjectLostError",
                  "OwnerDiedError", "ObjectFetchTimedOutError", "ObjectReconstructionFailedError",
                  "ObjectReconstructionFailedMaxAttemptsExceededError", "ObjectReconstructionFailedLineageEvictedError",
                  "WorkerCrashedError", "LocalRayletDiedError", "RaySystemError")

# Ray Data names the actor class of every actor pool stage 'MapWorker(<operator>)'.
PIPELINE_ACTOR_PREFIX = "MapWorker("


def is_cluster_fault(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is Ray losing a node, actor, worker or object."""
    return any(cls.__name__ in CLUSTER_FAULTS for e in exception_chain(exc) for cls in type(e).__mro__)


def actors_to_give_up(alive_at_start: set[str], alive_now: set[str], restarting: dict[str, float],
                      restarting_since: dict[str, float], now: float, timeout_s: float) -> list[str]:
    """The pipeline actors to kill: restarting for ``timeout_s`` or more while a node of the start is lost.

    ``restarting`` maps the ids of this job's pipeline actors now in state RESTARTING to ``now``;
    ``restarting_since`` (updated in place) keeps when each was first seen restarting, and forgets
    the actors that are no longer restarting.
    """
    for actor_id in list(restarting_since):
        if actor_id not in restarting:
            del restarting_since[actor_id]
    for actor_id in restarting:
        restarting_since.setdefault(actor_id, now)
    if timeout_s <= 0 or not (alive_at_start - alive_now):
        return []
    return sorted(a for a, since in restarting_since.items() if now - since >= timeout_s)


class LostActorWatch:
    """A daemon thread that gives up, for good, on pipeline actors lost with their node (module docstring).

    Use as a context manager around one pass of the pipeline; :attr:`given_up` lists the actors
    it killed. Without a connected Ray (the driver's unit tests feed it rows directly) it watches nothing. The Ray calls are injectable for the unit tests; by default they are the GCS's
    node and actor tables and the driver's own core worker (which owns Ray Data's actors).
    """

    def __init__(self, timeout_s: float, poll_s: float = 1.0, log: Callable[[str], None] | None = None,
                 alive_nodes: Callable[[], set[str]] | None = None,
                 pipeline_actors: Callable[[], dict[str, tuple[str, int]]] | None = None,
                 kill: Callable[[str], None] | None = None):
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self._alive_nodes = alive_nodes or _alive_nodes
        self._pipeline_actors = pipeline_actors or _pipeline_actors
        self._pid_alive: dict[str, int] = {}  # each actor's worker pid while it was last seen alive
        self._kill = kill or _kill_actor
        self.given_up: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LostActorWatch:
        if self.timeout_s > 0 and (self._alive_nodes is not _alive_nodes or _ray_connected()):
            alive_at_start = self._alive_nodes()
            self._thread = threading.Thread(target=self._run, args=(alive_at_start,), name="olrd-lost-actor-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 * self.poll_s + 5)

    def _run(self, alive_at_start: set[str]) -> None:
        since: dict[str, float] = {}
        while not self._stop.wait(self.poll_s):
            try:
                self.poll(alive_at_start, since)
            except Exception as exc:  # the GCS is busy or restarting: the next poll asks again
                self._log(f"[olrd] could not read the cluster's state ({type(exc).__name__}: {exc}); asking again")

    def poll(self, alive_at_start: set[str], since: dict[str, float]) -> list[str]:
        """One look at the cluster; kills and returns the actors given up on.

        Only an actor that no node has taken counts. Ray gives a restarted actor a new worker
        process on a node with room and keeps it RESTARTING while its constructor loads the models
        (minutes, on a node that does have room): its pid is then new. An actor still RESTARTING
        with the pid it had while alive has not been placed anywhere.
        """
        now = time.monotonic()
        actors = self._pipeline_actors()
        for actor_id, (state, pid) in actors.items():
            if state == "ALIVE":
                self._pid_alive[actor_id] = pid
        unplaced = {a: now for a, (state, pid) in actors.items()
                    if state == "RESTARTING" and self._pid_alive.get(a, pid) == pid}
        alive_now = self._alive_nodes() if unplaced else alive_at_start
        doomed = actors_to_give_up(alive_at_start, alive_now, unplaced, since, now, self.timeout_s)
        for actor_id in doomed:
            lost = len(alive_at_start - alive_now)
            self._log(f"[olrd] pipeline actor {actor_id[:8]} has been restarting for {self.timeout_s:g} s since "
                      f"{lost} node(s) were lost, and no live node has taken it: giving it up "
                      f"(lost_actor_timeout_s); its batch is planned again on the nodes alive")
            self._kill(actor_id)
            self.given_up.append(actor_id)
            del since[actor_id]
        return doomed


def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _pipeline_actors() -> dict[str, tuple[str, int]]:
    """This job's pipeline actors, alive or restarting -> (state, pid of their worker process)."""
    import ray
    from ray._private import state

    job_id = ray._private.worker.global_worker.current_job_id
    return {actor_id: (info["State"], int(info.get("Pid") or 0))
            for actor_id, info in state.actors(job_id=job_id).items()
            if info.get("ActorClassName", "").startswith(PIPELINE_ACTOR_PREFIX)
            and info.get("State") in ("ALIVE", "RESTARTING")}


def _kill_actor(actor_id: str) -> None:
    """``ray.kill(handle, no_restart=True)`` by id: the driver's core worker owns Ray Data's pool actors."""
    import ray

    ray._private.worker.global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)

"""The rule that gives up on a pipeline actor lost with its node, and the thread that applies it.

The real-Ray case (an actor restarting with no room, its batch waiting forever until the watch
kills it) is in ``test_olrd_multinode.py``; here the rule's edges, with the cluster's tables as
plain functions.
"""

from __future__ import annotations

import threading
import time

import pytest

from magiceraser.datasets.node_loss import LostActorWatch, actors_to_give_up, is_cluster_fault


def test_an_actor_is_given_up_only_after_the_timeout_and_only_once_a_node_of_the_start_is_lost():
    since: dict[str, float] = {}
    start = {"n1", "n2"}
    # A crash on a live node: restarting (loading its models) for as long as it takes.
    assert actors_to_give_up(start, start, {"a": 0.0}, since, now=0.0, timeout_s=5) == []
    assert actors_to_give_up(start, start, {"a": 100.0}, since, now=100.0, timeout_s=5) == []
    # A node of the start is lost: the same actor, restarting since t=0, is given up at once.
    assert actors_to_give_up(start, {"n2"}, {"a": 101.0}, since, now=101.0, timeout_s=5) == ["a"]
    # A node that joined later and left again does not count; neither does timeout 0 (wait forever).
    assert actors_to_give_up(start, start | {"n3"}, {"a": 200.0}, since, now=200.0, timeout_s=5) == []
    assert actors_to_give_up(start, {"n2"}, {"a": 300.0}, since, now=300.0, timeout_s=0) == []


def test_an_actor_that_came_back_starts_its_clock_again():
    since: dict[str, float] = {}
    start, lost = {"n1", "n2"}, {"n2"}
    assert actors_to_give_up(start, lost, {"a": 0.0, "b": 0.0}, since, now=0.0, timeout_s=5) == []
    assert actors_to_give_up(start, lost, {"b": 4.0}, since, now=4.0, timeout_s=5) == []  # 'a' is alive again
    assert since == {"b": 0.0}
    assert actors_to_give_up(start, lost, {"a": 6.0, "b": 6.0}, since, now=6.0, timeout_s=5) == ["b"]
    assert actors_to_give_up(start, lost, {"a": 11.0, "b": 11.0}, since, now=11.0, timeout_s=5) == ["a", "b"]


def test_the_watch_kills_the_lost_actor_from_its_thread_and_stops_with_the_pass():
    nodes = {"n1", "n2"}
    actors = {"lost-on-n1": ("ALIVE", 101), "moved-to-n3": ("ALIVE", 202)}
    killed: list[str] = []
    done = threading.Event()

    def kill(actor_id: str) -> None:
        killed.append(actor_id)
        actors.pop(actor_id, None)
        done.set()

    logged: list[str] = []
    watch = LostActorWatch(timeout_s=0.2, poll_s=0.02, log=logged.append, alive_nodes=lambda: set(nodes),
                           pipeline_actors=lambda: dict(actors), kill=kill)
    with watch:
        time.sleep(0.1)  # both seen alive, with their worker pids
        nodes.discard("n1")
        actors["lost-on-n1"] = ("RESTARTING", 101)  # no node has taken it: still the dead worker's pid
        actors["moved-to-n3"] = ("RESTARTING", 303)  # a new worker on a node with room, loading its models
        assert done.wait(10)
        time.sleep(0.5)
    assert killed == ["lost-on-n1"] == watch.given_up  # the one loading elsewhere was never killed
    assert len(logged) == 1 and "lost-on" in logged[0] and "lost_actor_timeout_s" in logged[0]
    assert not any(t.name == "olrd-lost-actor-watch" for t in threading.enumerate())


def test_a_failing_look_at_the_cluster_is_logged_and_asked_again():
    calls = {"n": 0}

    def flaky() -> set[str]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("GCS unavailable")
        return {}

    logged: list[str] = []
    with LostActorWatch(timeout_s=1, poll_s=0.01, log=logged.append, alive_nodes=lambda: {"n1"},
                        pipeline_actors=flaky, kill=lambda a: None):
        deadline = time.monotonic() + 10
        while calls["n"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert calls["n"] >= 3 and any("GCS unavailable" in m for m in logged)


def test_timeout_zero_starts_no_thread():
    with LostActorWatch(timeout_s=0, alive_nodes=lambda: pytest.fail("the cluster was asked")) as watch:
        assert watch._thread is None


def test_cluster_faults_are_found_through_causes():
    class ActorDiedError(Exception):
        pass

    try:
        try:
            raise ActorDiedError("lost")
        except ActorDiedError as inner:
            raise RuntimeError("Ray Data failed") from inner
    except RuntimeError as outer:
        assert is_cluster_fault(outer)
    assert not is_cluster_fault(ValueError("a bug in a stage"))

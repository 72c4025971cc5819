"""``magiceraser olrd`` on a Ray cluster of a head and two worker nodes on this machine, one node lost.

The cluster is ``ray.cluster_utils.Cluster`` (what Ray's own tests use): each node is its own
raylet with its own resources, so actors really live on different nodes and removing a node kills
its raylet and every worker process on it, exactly as a crashed machine would. The job runs as a
separate driver process that joins by address (``RAY_ADDRESS``, what ``ray job submit`` sets).

The reference is an uninterrupted run of the same inputs on a single-node local Ray, made first
(only one Ray cluster runs at a time on this shared machine).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from .bad_inputs import corpus

# Ray starts workers at niceness 15 (they starve on a busy 2-core machine); its agent may need
# more than 60 s to come up there.
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")

NUM_SCENES = 30
BAD = ("empty.jpg", "text.jpg", "tiny.png")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def multinode_config(tmp_path_factory, tiny_llava) -> Path:
    """Job config of 30 scenes + 3 bad inputs in 11 shards; two 1-CPU actors (one per worker node)."""
    from magiceraser.datasets.demo_scenes import write_demo_scenes

    root = tmp_path_factory.mktemp("olrd-multinode")
    scenes = write_demo_scenes(root / "scenes", NUM_SCENES)
    files = corpus()
    for name in BAD:
        (scenes / "images" / name).write_bytes(files[name][0])
    cfg = {
        "input": str(scenes / "images"),
        "samples_per_shard": 3,
        "image_format": "png",
        "progress_interval_s": 5.0,
        "segmenter": {"backend": "coco_panoptic", "annotations": str(scenes / "panoptic.json"), "batch_size": 2,
                      "num_cpus": 0.5},
        "captioner": {"backend": "transformers", "model": str(tiny_llava), "device": "cpu", "batch_size": 2,
                      "num_actors": 2, "num_cpus": 0.5, "max_new_tokens": 4},
    }
    path = root / "olrd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _olrd(config: Path, output: Path, *overrides: str, address: str | None = None) -> subprocess.Popen:
    """``magiceraser olrd`` as its own driver process; with ``address`` it joins that cluster via RAY_ADDRESS."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
    args = [f"output={output}", *overrides] + ([] if address else ["ray_address=local", "num_cpus=2"])
    return subprocess.Popen([sys.executable, "-m", "magiceraser", "olrd", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(REPO))


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"olrd did not finish in {timeout} s:\n{out[-4000:]}") from None
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def single_node_reference(multinode_config, tmp_path_factory) -> Path:
    """The same job, uninterrupted, on a one-node local Ray started (and stopped) by the driver."""
    out = tmp_path_factory.mktemp("olrd-reference") / "out"
    _finish(_olrd(multinode_config, out))
    return out


@pytest.fixture(scope="module")
def cluster(single_node_reference):
    """A head without CPUs and two worker nodes of 1 CPU each; shut down however the tests end."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        c.workers = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()


def _lose_a_worker_node(cluster, proc: subprocess.Popen, ready, what: str, timeout: float) -> None:
    """Once ``ready()`` (``what`` exists), remove the first worker node: its raylet and every worker on it
    are SIGKILLed, as a crashed machine's. The caller adds a replacement node back."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the command ended before a node could be killed:\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.01)
    cluster.remove_node(cluster.workers.pop(0), allow_graceful=False)


def assert_same_output(out: Path, reference: Path) -> None:
    """Same shard names and bytes, same skip log; no temporaries, no lock, stats.json written."""
    tars = sorted(p.name for p in reference.glob("olrd-*.tar"))
    assert sorted(p.name for p in out.glob("olrd-*.tar")) == tars
    for name in tars:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert (out / "skipped.jsonl").read_bytes() == (reference / "skipped.jsonl").read_bytes()
    assert (out / "stats.json").exists() and not (out / "job.lock").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_a_lost_worker_node_costs_nothing(cluster, multinode_config, single_node_reference, tmp_path):
    """Kill one of two worker nodes once a shard is written: the one command still finishes, same bytes."""
    n_shards = len(list(single_node_reference.glob("olrd-*.tar")))
    out = tmp_path / "out"
    proc = _olrd(multinode_config, out, address=cluster.address)
    _lose_a_worker_node(cluster, proc, lambda: any(out.glob("olrd-*.json")), "a finished shard", timeout=240)
    try:
        written_at_kill = len(list(out.glob("olrd-*.json")))
        log = _finish(proc)
    finally:
        cluster.workers.append(cluster.add_node(num_cpus=1))  # back to two workers for the next tests, whatever happened
        cluster.wait_for_nodes()
    assert written_at_kill < n_shards, "the node was lost after the job had finished: not a test of node loss"
    assert_same_output(out, single_node_reference)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["inputs"] == NUM_SCENES + len(BAD) and stats["shards"] == n_shards
    assert "lost" in log, log[-3000:]  # the retry was reported


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_actor_lost_with_its_node_and_without_room_to_restart_is_given_up(cluster):
    """The hang a lost node could cause: Ray restarts a model actor that died with its node and queues its
    batch on it again; with no live node room for it, the batch waits forever (before the watch, olrd hung
    whenever the task retries had not run out first: a race). The watch, once a node of the start is lost
    and one of this job's pipeline actors has been restarting for ``timeout_s``, kills it for good: the batch
    fails with an ActorDiedError (a cluster fault the driver re-plans on). Real actors on real nodes."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    from magiceraser.datasets.node_loss import PIPELINE_ACTOR_PREFIX, LostActorWatch

    def where(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def work(self, seconds: float) -> str:
        time.sleep(seconds)
        return "done"

    # What Ray Data's pools are: 1-CPU actors of a class named 'MapWorker(...)', restarted and retried.
    worker_cls = type(f"{PIPELINE_ACTOR_PREFIX}MapBatches(Stage))", (), {"where": where, "work": work})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        actors = [ray.remote(num_cpus=1, max_restarts=3, max_task_retries=-1)(worker_cls).remote() for _ in range(2)]
        nodes = ray.get([a.where.remote() for a in actors], timeout=120)
        doomed = cluster.workers[0]
        assert sorted(nodes) == sorted(w.node_id for w in cluster.workers), "one actor per worker node"
        victim = actors[nodes.index(doomed.node_id)]
        batch = victim.work.remote(3600)
        alive_at_start = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        watch, since = LostActorWatch(timeout_s=1.0, log=lambda m: None), {}
        assert watch.poll(alive_at_start, since) == [] and since == {}  # both alive: their worker pids noted
        time.sleep(1)
        cluster.remove_node(cluster.workers.pop(0), allow_graceful=False)

        with pytest.raises(GetTimeoutError):  # without the watch: restarting, no room, the batch waits
            ray.get(batch, timeout=20)
        assert watch.poll(alive_at_start, since) == []  # first seen restarting now: not yet given up
        assert set(since) == {victim._actor_id.hex()}
        time.sleep(1.2)
        assert watch.poll(alive_at_start, since) == [victim._actor_id.hex()]
        with pytest.raises(RayActorError):  # the batch now fails, which the driver re-plans on
            ray.get(batch, timeout=60)
        assert ray.get(actors[1 - actors.index(victim)].work.remote(0), timeout=60) == "done"  # the survivor is untouched
    finally:
        ray.shutdown()
        cluster.workers.append(cluster.add_node(num_cpus=1))
        cluster.wait_for_nodes()


def _node_of_actors(class_name: str) -> list[str]:
    """Node ids of every actor (alive or dead) of ``class_name``, from the GCS (no dashboard needed)."""
    from ray._private import state

    return [a["Address"]["NodeID"] for a in state.actors().values() if class_name in a.get("ActorClassName", "")]


@pytest.mark.slow
def test_cache_latents_runs_one_task_per_shard_on_the_cluster(cluster, single_node_reference, tiny_sd, tmp_path):
    """``cache-latents executor=ray`` as a driver joining the cluster: the same cache as a local build."""
    from magiceraser.training.latent_cache import LatentCacheConfig, build_cache

    urls = str(single_node_reference / "olrd-{000000..000002}.tar")
    common = dict(urls=[urls], base_model=str(tiny_sd), resolution=64, device="cpu", storage_dtype="float32")
    local = build_cache(LatentCacheConfig(**common, out_dir=str(tmp_path / "local")))
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    proc = subprocess.run(
        [sys.executable, "-m", "magiceraser", "cache-latents", f"urls=[{urls!r}]", f"out_dir={tmp_path / 'ray'}",
         f"base_model={tiny_sd}", "resolution=64", "device=cpu", "storage_dtype=float32", "executor=ray"],
        capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["encoded_shards"] == 3 and summary["written"] == local["written"] > 0
    for tar in sorted((tmp_path / "local").glob("olrd-*.tar")):
        # Same members and values; the last float bits may differ (the Ray task runs torch with another thread count).
        ours, theirs = _members(tar), _members(tmp_path / "ray" / tar.name)
        assert ours.keys() == theirs.keys(), tar.name
        for name, data in ours.items():
            if name.endswith(".npy"):
                np.testing.assert_allclose(np.load(io.BytesIO(theirs[name])), np.load(io.BytesIO(data)), rtol=1e-4, atol=1e-5)
            else:
                assert theirs[name] == data, name


def _members(path: Path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


TRAIN = {
    "data.resolution": 64, "data.batch_size": 2, "data.num_workers": 0, "data.shuffle_buffer": 4,
    "phases.total_steps": 40, "phases.textual_inversion_steps": 2, "phases.textual_inversion_subset": 1.0,
    "optim.warmup_steps": 0, "optim.lr": 1e-3, "optim.embedding_lr": 1e-3, "checkpoint.every": 4,
    "checkpoint.keep_last": 2, "wandb.mode": "disabled", "log_every": 1, "device": "cpu", "num_threads": 1,
    "ray.num_workers": 2, "ray.cpus_per_worker": 1,
}


def _train_config(values: dict):
    from magiceraser.config import load_config
    from magiceraser.training.config import TrainConfig

    return load_config(TrainConfig, None, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                                           for k, v in values.items()])


@pytest.fixture(scope="module")
def ray_train_reference(cluster, single_node_reference, tiny_sd, tmp_path_factory):
    """An uninterrupted Ray Train run of 2 workers on the 2 worker nodes, driven from this process."""
    import ray

    from magiceraser.training.ray_launch import run_on_ray

    root = tmp_path_factory.mktemp("ray-train")
    cfg = _train_config({**TRAIN, "model.base_model": str(tiny_sd), "data.urls": [str(single_node_reference / "olrd-*.tar")],
                         "out_dir": str(root / "out"), "ray.enabled": True, "ray.storage_path": str(root / "ray"),
                         "ray.address": cluster.address})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        result = run_on_ray(cfg)
        nodes = _node_of_actors("RayTrainWorker")
    finally:
        ray.shutdown()
    return root / "out", result, nodes


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_train_places_two_workers_on_two_nodes(cluster, ray_train_reference):
    """Ray Train with 2 workers of 1 CPU on a cluster whose only CPUs are one per worker node."""
    out, outcome, nodes = ray_train_reference
    assert outcome.result.error is None and outcome.report["outcome"] == "finished" and outcome.report["world_size"] == 2
    meta = json.loads((out / "magiceraser.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 40
    workers = {n.node_id for n in cluster.workers}
    assert len(nodes) == 2 and set(nodes) <= workers and len(set(nodes)) == 2, (nodes, workers)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_train_from_relative_paths_survives_a_lost_node(cluster, ray_train_reference, single_node_reference, tiny_sd,
                                                            tmp_path):
    """``magiceraser train --ray`` from a folder of its own, every path in the config relative to it.

    Ray Train starts its workers in another working directory, so the driver resolves the paths
    first. One worker node is killed once a checkpoint exists (its raylet and workers SIGKILLed, as a
    lost machine); Ray Train's failure policy restarts the workers, which continue from the newest
    checkpoint by themselves. The one command finishes, and the export equals an uninterrupted run's.
    """
    import shutil

    from safetensors.torch import load_file

    (tmp_path / "data").mkdir()
    for tar in single_node_reference.glob("olrd-*.tar"):
        shutil.copy(tar, tmp_path / "data" / tar.name)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sd").symlink_to(tiny_sd)
    values = {**TRAIN, "model.base_model": "models/sd", "data.urls": ["data/olrd-*.tar"], "out_dir": "runs/ray",
              "ray.storage_path": "ray-results"}
    from magiceraser.config import save_config

    save_config(_train_config(values), tmp_path / "train.yaml")
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "magiceraser", "train", "--config", "train.yaml", "--ray"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(tmp_path))
    ckpts = tmp_path / "runs" / "ray" / "checkpoints"
    _lose_a_worker_node(cluster, proc, lambda: any(ckpts.glob("checkpoint-*/state.json")), "a checkpoint", timeout=300)
    at_kill = max(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*") if (p / "state.json").exists())
    cluster.workers.append(cluster.add_node(num_cpus=1))  # the replacement machine the workers restart on
    cluster.wait_for_nodes()
    log = _finish(proc, timeout=400)
    assert at_kill < 40, "the node was lost after the run had finished: not a test of node loss"
    assert "restart 1 of this launch: continuing run" in log, log[-4000:]
    out = tmp_path / "runs" / "ray"
    reference = ray_train_reference[0]
    for name in ("pytorch_lora_weights.safetensors", "learned_embeds.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(out / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert not (out / "job.lock").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_to_the_ray_driver_saves_a_checkpoint_on_the_workers_and_resume_ends_exactly(
        cluster, ray_train_reference, single_node_reference, tiny_sd, tmp_path):
    """``ray job stop`` or a stopped head pod: SIGTERM to the ``--ray`` driver. It asks the workers (through
    the coordinator actor they poll) to stop after one agreed step and save; it exits 75 in one line. The
    same command with ``--resume`` then ends with the uninterrupted run's export."""
    from safetensors.torch import load_file

    from magiceraser.config import save_config

    values = {**TRAIN, "model.base_model": str(tiny_sd), "data.urls": [str(single_node_reference / "olrd-*.tar")],
              "out_dir": str(tmp_path / "out"), "ray.storage_path": str(tmp_path / "ray")}
    save_config(_train_config(values), tmp_path / "train.yaml")
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "magiceraser", "train", "--config", str(tmp_path / "train.yaml"), "--ray"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(tmp_path))
    ckpts = tmp_path / "out" / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(ckpts.glob("checkpoint-*/state.json")):
        assert proc.poll() is None, f"the run ended before the signal:\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-4000:]
    line = [x for x in out.splitlines() if x.startswith("magiceraser train: preempted")]
    assert len(line) == 1 and "(SIGTERM to the Ray driver)" in line[0] and line[0].endswith("--resume"), out[-4000:]
    stopped = int(line[0].split("after step ")[1].split(";")[0])
    assert stopped < 40 and (ckpts / f"checkpoint-{stopped:08d}" / "state.json").exists()
    assert not (tmp_path / "out" / "job.lock").exists() and not (tmp_path / "out" / "magiceraser.json").exists()

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=400)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    reference = ray_train_reference[0]
    for name in ("pytorch_lora_weights.safetensors", "learned_embeds.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(tmp_path / "out" / name))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)

"""Lineage from an evaluation's score back to the model, its training run and the shards (issue "Day one
on a real cluster"), in W&B and in our own files.

The three commands run through their real entry points, W&B offline, on tiny data:

* ``magiceraser olrd``: its Ray pipeline is replaced by rows of real samples, as the driver tests
  do (tests/datasets/test_olrd_driver.py); listing, fingerprint, shard writer, stats and the W&B
  run are the real code.
* ``magiceraser train``: the tiny SD for 2 steps on those shards plus one shard of no OLRD job.
* ``magiceraser evaluate``: Telea and the trained model (kind magiceraser) on the OLRD shards.

What each offline run recorded is read back from its ``.wandb`` file with W&B's own protobuf
(``wandb_internal_pb2.Record``, through tests/training/wandb_records.py): the artifacts each run
logged or used, with their manifests and digests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from training.olrd_fixture import _encode, make_sample, write_olrd_shards
from training.wandb_records import records

from magiceraser.cli import main as cli_main
from magiceraser.datasets import ray_pipeline
from magiceraser.lineage import (
    DATASET_TYPE,
    MODEL_ARTIFACT,
    MODEL_TYPE,
    dataset_artifact_name,
    dataset_lineage,
    export_digest,
    shard_uri,
)

PROJECT = "lineage-test"
WANDB = {"enabled": True, "mode": "offline", "project": PROJECT}
N_INPUTS, PER_SHARD = 10, 4  # 3 shards; every 4th input is skipped (too_small)


# ------------------------------------------------------------------ the three commands


def _scripted_pipeline(cfg, items, segmenter_name, elastic=False):
    """Stands in for ``ray_pipeline.build_dataset``: the row of every input, as the caption stage hands it over."""

    def row(it) -> dict:
        skip = it.index % 4 == 3
        sample = make_sample(np.random.default_rng(it.index), 96, 80)
        return {"source": it.source, "key": it.key, "index": it.index, "shard": it.shard,
                "reason": "too_small" if skip else "", "stage": "read" if skip else "", "message": "",
                "original": b"" if skip else _encode(sample["original"], "png"),
                "blended": b"" if skip else _encode(sample["blended"], "png"),
                "mask": b"" if skip else _encode(sample["mask"], "png"),
                "meta": "" if skip else json.dumps(sample["meta"]), "done_at": time.time()}

    class Dataset:
        def iter_batches(self, batch_size=None, batch_format="numpy"):
            for it in items:
                r = row(it)
                yield {k: np.asarray([v], dtype=None if k in ("index", "shard", "done_at") else object) for k, v in r.items()}

    return Dataset()


def _olrd_config(root: Path, **extra) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(N_INPUTS):
        (images / f"img{i:02d}.png").write_bytes(b"never decoded: the pipeline is scripted")
    (root / "panoptic").mkdir()
    (root / "panoptic.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"img{i:02d}.png"} for i in range(N_INPUTS)],
        "annotations": [{"image_id": i, "file_name": f"img{i:02d}.png", "segments_info": []} for i in range(N_INPUTS)]}))
    path = root / "olrd.yaml"
    path.write_text(yaml.safe_dump({
        "input": str(images), "output": str(root / "olrd"), "samples_per_shard": PER_SHARD, "image_format": "png",
        "progress_interval_s": 1000, "segmenter": {"backend": "coco_panoptic", "annotations": str(root / "panoptic.json")},
        "captioner": {"backend": "transformers", "model": "unused"}, "wandb": WANDB, **extra}))
    return path


def _nested(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_sd):
    """olrd -> train -> evaluate, each a W&B offline run; returns the folders."""
    root = tmp_path_factory.mktemp("lineage")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DATA_DIR", str(root / "wandb-data"))  # W&B's staging copies, not under $HOME
        mp.setenv("WANDB_CACHE_DIR", str(root / "wandb-cache"))
        mp.setattr(ray_pipeline, "init_ray", lambda cfg: False)
        mp.setattr(ray_pipeline, "build_dataset", _scripted_pipeline)
        assert cli_main(["olrd", "--config", str(_olrd_config(root))]) == 0
        olrd = root / "olrd"

        foreign = root / "foreign"  # a shard of no OLRD job: no job.json, no sidecar
        write_olrd_shards(foreign, num_shards=1, per_shard=2, seed=5)
        train = root / "train"
        train_yaml = root / "train.yaml"
        train_yaml.write_text(yaml.safe_dump(_nested({
            "model.base_model": str(tiny_sd), "data.urls": [str(olrd / "olrd-*.tar"), str(foreign / "olrd-000000.tar")],
            "data.resolution": 64, "data.batch_size": 2, "data.num_workers": 0, "data.shuffle_buffer": 4,
            "phases.total_steps": 2, "phases.textual_inversion_steps": 1, "phases.textual_inversion_subset": 1.0,
            "optim.warmup_steps": 0, "checkpoint.every": 0, "log_every": 1, "out_dir": str(train), "device": "cpu",
            "wandb.mode": "offline", "wandb.project": PROJECT,
        })))
        assert cli_main(["train", "--config", str(train_yaml)]) == 0

        evaluation = root / "eval"
        eval_yaml = root / "eval.yaml"
        eval_yaml.write_text(yaml.safe_dump({
            "out_dir": str(evaluation), "size": 64, "device": "cpu", "grid_cases": 0, "bootstrap": {"resamples": 0},
            "datasets": [{"name": "olrd", "kind": "olrd_shards", "path": str(olrd / "olrd-*.tar"), "num_pairs": 2}],
            "methods": [{"name": "Telea", "kind": "telea"},
                        {"name": "MagicEraser", "kind": "magiceraser", "base_model": str(tiny_sd), "trained_dir": str(train),
                         "content_init": "telea", "refocus": False, "num_inference_steps": 2}],
            "wandb": WANDB}))
        assert cli_main(["evaluate", "--config", str(eval_yaml)]) == 0
        yield {"root": root, "olrd": olrd, "foreign": foreign, "train": train, "eval": evaluation}


# ------------------------------------------------------------------ reading the offline runs


def run_records(folder: Path) -> list:
    """Every record of the one offline W&B run under ``folder``/wandb."""
    from wandb.proto import wandb_internal_pb2

    [path] = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    parsed = []
    for raw in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        parsed.append(rec)
    return parsed


def artifacts(recs) -> list:
    return [r.artifact for r in recs if r.WhichOneof("record_type") == "artifact"]


def config_of(recs) -> dict:
    """The run's config: the run record's (what ``wandb.init(config=...)`` got) and later updates."""
    out: dict = {}
    for r in recs:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for item in items:
            out[item.key or item.nested_key[0]] = json.loads(item.value_json)
    return out


def summary_of(recs) -> dict:
    """Top-level summary values set as a whole (``run.summary.update``)."""
    out: dict = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                if item.key:
                    out[item.key] = json.loads(item.value_json)
    return out


def history_keys(recs) -> list[set[str]]:
    """The top-level keys of each logged step."""
    return [{item.key or item.nested_key[0] for item in r.history.item}
            for r in recs if r.WhichOneof("record_type") == "history"]


def manifest(artifact) -> dict[str, dict]:
    return {e.path: {"ref": e.ref, "digest": e.digest, "size": e.size} for e in artifact.manifest.contents}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def logged(recs, kind: str) -> list:
    """The artifacts of ``kind`` the run logged as its output (not used)."""
    return [a for a in artifacts(recs) if a.type == kind and not a.use_after_commit]


def used(recs, kind: str) -> list:
    """The artifacts of ``kind`` the run declared as its input."""
    return [a for a in artifacts(recs) if a.type == kind and a.use_after_commit]


# ------------------------------------------------------------------ the tests


def test_olrd_run_logs_the_job_and_a_dataset_artifact_referencing_every_shard(chain):
    olrd = chain["olrd"]
    recs = run_records(olrd)
    job = json.loads((olrd / "job.json").read_text())
    stats = json.loads((olrd / "stats.json").read_text())
    config = config_of(recs)
    assert config["job_fingerprint"] == job["fingerprint"] and config["job"]["listing"] == job["listing"]
    assert config["samples_per_shard"] == PER_SHARD and config["wandb"]["project"] == PROJECT
    summary = summary_of(recs)
    assert {k: summary[k] for k in ("inputs", "samples", "skipped", "shards")} == \
        {k: stats[k] for k in ("inputs", "samples", "skipped", "shards")} == {"inputs": 10, "samples": 8, "skipped": 2, "shards": 3}
    assert summary["skip_reasons"] == {"too_small": 2}
    steps = history_keys(recs)
    assert any("skip_reasons" in k for k in steps) and any("preview" in k for k in steps)
    assert any({"throughput/images_per_s", "throughput/inputs_done", "throughput/seconds"} <= k for k in steps)
    [table] = list(olrd.glob("wandb/offline-run-*/files/media/table/skip_reasons_*.table.json"))
    assert json.loads(table.read_text())["data"] == [["too_small", "read", False, 2]]

    [dataset] = logged(recs, DATASET_TYPE)
    assert dataset.name == dataset_artifact_name(job["fingerprint"]) == f"olrd-{job['fingerprint'][:16]}"
    assert json.loads(dataset.metadata)["job_fingerprint"] == job["fingerprint"]
    tars = sorted(olrd.glob("olrd-*.tar"))
    assert len(tars) == 3
    # A reference per shard, by URI, with the shard's sha256 and size; nothing copied (no local file).
    assert manifest(dataset) == {t.name: {"ref": t.resolve().as_uri(), "digest": sha256(t), "size": t.stat().st_size} for t in tars}
    assert all(not e.local_path for e in dataset.manifest.contents)
    # The digest the sidecars recorded as the shards were written (nothing read the tars again).
    for t in tars:
        assert json.loads(t.with_suffix(".json").read_text())["tar_sha256"] == sha256(t)


def test_training_uses_the_same_dataset_artifact_and_logs_the_model(chain):
    olrd_dataset = logged(run_records(chain["olrd"]), DATASET_TYPE)[0]
    recs = run_records(chain["train"])
    [dataset] = used(recs, DATASET_TYPE)
    assert (dataset.name, dataset.digest) == (olrd_dataset.name, olrd_dataset.digest)
    assert manifest(dataset) == manifest(olrd_dataset)
    assert not logged(recs, DATASET_TYPE)

    # The shard of no job (no job.json, no digest in a sidecar) is named in the run config instead, by what the
    # file system says of it (never read: a foreign dataset of terabytes must not be hashed at every start).
    foreign = chain["foreign"] / "olrd-000000.tar"
    lineage = config_of(recs)["lineage"]
    st = foreign.stat()
    assert lineage["shards_without_job"] == [{"uri": foreign.resolve().as_uri(), "digest": None, "bytes": st.st_size,
                                              "job_fingerprint": None,
                                              "identity": f"size={st.st_size},mtime_ns={st.st_mtime_ns}"}]
    assert lineage["datasets"] == [{"artifact": olrd_dataset.name, "job_fingerprint": json.loads(olrd_dataset.metadata)["job_fingerprint"],
                                    "digest": olrd_dataset.digest, "num_shards": 3}]

    [model] = logged(recs, MODEL_TYPE)
    assert model.name == MODEL_ARTIFACT
    # the three weight/meta files and the model card written with every export (no validation in this run: no grid)
    assert set(manifest(model)) == {"pytorch_lora_weights.safetensors", "learned_embeds.safetensors", "magiceraser.json",
                                    "README.md"}
    assert model.digest == export_digest(chain["train"])


def test_evaluation_uses_the_model_artifact_the_training_run_logged(chain):
    [model] = logged(run_records(chain["train"]), MODEL_TYPE)
    recs = run_records(chain["eval"])
    [used_model] = used(recs, MODEL_TYPE)  # one method has a trained_dir; Telea has none
    assert (used_model.name, used_model.digest) == (model.name, model.digest)
    assert manifest(used_model) == manifest(model)
    assert config_of(recs)["lineage"]["methods"]["MagicEraser"]["export_digest"] == model.digest
    assert not logged(recs, MODEL_TYPE)
    assert any("results" in k for k in history_keys(recs))  # the tables are still logged


def test_our_files_carry_the_same_links_without_wandb(chain):
    from magiceraser.artifacts import read_trained_output

    job = json.loads((chain["olrd"] / "job.json").read_text())
    olrd_dataset = logged(run_records(chain["olrd"]), DATASET_TYPE)[0]
    trained = read_trained_output(chain["train"])  # the export with its lineage reads and checks as before
    lineage = trained.meta["lineage"]
    assert lineage["job_fingerprints"] == [job["fingerprint"]]
    assert lineage["datasets"] == [{"artifact": olrd_dataset.name, "job_fingerprint": job["fingerprint"],
                                    "digest": olrd_dataset.digest, "num_shards": 3}]
    tars = [*sorted(chain["olrd"].glob("olrd-*.tar")), chain["foreign"] / "olrd-000000.tar"]
    ours, foreign = [t for t in tars if t.parent == chain["olrd"]], chain["foreign"] / "olrd-000000.tar"
    assert lineage["shards"] == [{"uri": t.resolve().as_uri(), "digest": sha256(t), "bytes": t.stat().st_size,
                                  "job_fingerprint": job["fingerprint"]} for t in ours] + [
        {"uri": foreign.resolve().as_uri(), "digest": None, "bytes": foreign.stat().st_size, "job_fingerprint": None,
         "identity": f"size={foreign.stat().st_size},mtime_ns={foreign.stat().st_mtime_ns}"}]

    [model] = logged(run_records(chain["train"]), MODEL_TYPE)
    record = json.loads((chain["eval"] / "lineage.json").read_text())
    assert set(record["methods"]) == {"MagicEraser"}
    method = record["methods"]["MagicEraser"]
    assert method["export_digest"] == model.digest and method["model_artifact"] == MODEL_ARTIFACT
    assert method["trained_dir"] == str(chain["train"]) and method["job_fingerprints"] == [job["fingerprint"]]
    assert method["files"] == trained.meta["files"]


def test_an_export_without_lineage_still_reads(chain, tmp_path):
    """Exports written before the lineage entry: the eraser's reader and the evaluation's record take them."""
    from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME, read_trained_output
    from magiceraser.lineage import export_lineage

    for name in (LORA_WEIGHTS_NAME, EMBEDS_NAME, META_NAME):
        shutil.copy2(chain["train"] / name, tmp_path / name)
    meta = json.loads((tmp_path / META_NAME).read_text())
    del meta["lineage"]
    (tmp_path / META_NAME).write_text(json.dumps(meta, indent=2))
    assert "lineage" not in read_trained_output(tmp_path).meta
    old = export_lineage(tmp_path)
    assert old["job_fingerprints"] == [] and old["datasets"] == [] and old["export_digest"] != export_digest(chain["train"])


def test_the_dataset_digest_follows_the_shards_not_where_they_lie(chain, tmp_path):
    """A copy of the output elsewhere names the same artifact version; a subset of its shards another one."""
    olrd_dataset = logged(run_records(chain["olrd"]), DATASET_TYPE)[0]
    copy = tmp_path / "copy"
    shutil.copytree(chain["olrd"], copy, ignore=shutil.ignore_patterns("wandb"))
    [version] = dataset_lineage([str(p) for p in sorted(copy.glob("olrd-*.tar"))]).datasets
    assert (version.artifact_name, version.digest) == (olrd_dataset.name, olrd_dataset.digest)
    assert {e.ref for e in version.artifact().manifest.entries.values()} == {shard_uri(str(p)) for p in copy.glob("olrd-*.tar")}
    [subset] = dataset_lineage([str(copy / "olrd-000000.tar")]).datasets
    assert subset.artifact_name == olrd_dataset.name and subset.digest != olrd_dataset.digest
    # A sidecar that does not describe its tar vouches for nothing: the shard belongs to no job, named by its identity.
    (copy / "olrd-000001.tar").write_bytes((copy / "olrd-000001.tar").read_bytes() + b"\0" * 512)
    lineage = dataset_lineage([str(p) for p in sorted(copy.glob("olrd-*.tar"))])
    [changed] = [s for s in lineage.shards_without_job]
    size = (copy / "olrd-000001.tar").stat().st_size
    assert changed.uri.endswith("olrd-000001.tar") and changed.sha256 is None and changed.identity.startswith(f"size={size},")
    assert changed.job_fingerprint is None


def test_a_wandb_failure_is_a_warning_and_a_rerun_logs_the_same_artifact(chain, tmp_path, monkeypatch, capsys):
    from magiceraser.datasets import tracking

    monkeypatch.setattr(ray_pipeline, "init_ray", lambda cfg: False)
    monkeypatch.setattr(ray_pipeline, "build_dataset", _scripted_pipeline)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    config = _olrd_config(tmp_path)

    def down(*args, **kwargs):
        raise ConnectionError("api.wandb.ai is unreachable")

    monkeypatch.setattr(tracking, "start_run", down)
    assert cli_main(["olrd", "--config", str(config)]) == 0
    out = tmp_path / "olrd"
    assert (out / "stats.json").exists() and len(list(out.glob("olrd-*.tar"))) == 3
    err = capsys.readouterr().err
    assert "[olrd] W&B: could not log this job's run (ConnectionError: api.wandb.ai is unreachable)" in err

    # The rerun (resume: every shard done) logs its run, with the same dataset version.
    monkeypatch.undo()
    monkeypatch.setattr(ray_pipeline, "init_ray", lambda cfg: False)
    monkeypatch.setattr(ray_pipeline, "build_dataset", _scripted_pipeline)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    assert cli_main(["olrd", "--config", str(config)]) == 0
    [dataset] = logged(run_records(out), DATASET_TYPE)
    assert dataset.name == dataset_artifact_name(json.loads((out / "job.json").read_text())["fingerprint"])
    # Another job (its listing names other paths) with the same inputs and seed: the same bytes, the same digest.
    first = logged(run_records(chain["olrd"]), DATASET_TYPE)[0]
    assert dataset.name != first.name and dataset.digest == first.digest


def test_s3_shards_are_referenced_by_their_s3_uris_and_digest_as_the_same_bytes_locally(chain, s3_server, tmp_path, monkeypatch):
    from magiceraser.olrd_samples import expand_urls

    monkeypatch.setattr(ray_pipeline, "init_ray", lambda cfg: False)
    monkeypatch.setattr(ray_pipeline, "build_dataset", _scripted_pipeline)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.chdir(tmp_path)  # an object-store output's W&B run goes to ./wandb
    url = f"s3://{s3_server.new_bucket('lineage')}/olrd"
    assert cli_main(["olrd", "--config", str(_olrd_config(tmp_path, output=url))]) == 0
    [dataset] = logged(run_records(tmp_path), DATASET_TYPE)
    assert {e.path: e.ref for e in dataset.manifest.contents} == {f"olrd-00000{i}.tar": f"{url}/olrd-00000{i}.tar" for i in range(3)}
    assert dataset.digest == logged(run_records(chain["olrd"]), DATASET_TYPE)[0].digest  # the bytes of the local run
    # The trainer's side: the shards as data.urls resolves them, the same artifact.
    [version] = dataset_lineage(expand_urls([f"{url}/olrd-*.tar"])).datasets
    assert (version.artifact_name, version.digest) == (dataset.name, dataset.digest)


def test_a_wandb_failure_in_training_is_a_warning_and_the_export_is_written(chain, tiny_sd, tmp_path, monkeypatch, caplog):
    from training.run_config import tiny_train_config

    from magiceraser.training import tracking
    from magiceraser.training.loop import run_training

    def down(export_dir):
        raise ConnectionError("api.wandb.ai is unreachable")

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setattr(tracking, "model_artifact", down)
    cfg = tiny_train_config(tiny_sd, [chain["olrd"] / "olrd-000000.tar"], tmp_path / "run", **{
        "phases.total_steps": 1, "wandb.mode": "offline", "wandb.project": PROJECT})
    run_training(cfg)
    assert "W&B: could not log the export" in caplog.text and "ConnectionError: api.wandb.ai is unreachable" in caplog.text
    meta = json.loads((tmp_path / "run" / "magiceraser.json").read_text())
    [version] = dataset_lineage([str(chain["olrd"] / "olrd-000000.tar")]).datasets
    assert meta["lineage"]["datasets"] == [version.summary()]  # a subset of the job's shards: its own digest
    recs = run_records(tmp_path / "run")
    assert [(a.name, a.digest) for a in used(recs, DATASET_TYPE)] == [(version.artifact_name, version.digest)]
    assert not logged(recs, MODEL_TYPE)


def test_an_evaluation_whose_export_is_gone_reports_no_stale_row(chain, tiny_sd, tmp_path, capsys):
    """Cached erased images are keyed on the export's content: with the export gone nothing vouches for them,
    so the method is reported as not evaluated (exit 2) instead of publishing a row for a model no one can name."""
    train = tmp_path / "train"
    shutil.copytree(chain["train"], train, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "out_dir": str(tmp_path / "eval"), "size": 64, "device": "cpu", "grid_cases": 0, "bootstrap": {"resamples": 0},
        "datasets": [{"name": "olrd", "kind": "olrd_shards", "path": str(chain["olrd"] / "olrd-*.tar"), "num_pairs": 1}],
        "methods": [{"name": "MagicEraser", "kind": "magiceraser", "base_model": str(tiny_sd), "trained_dir": str(train),
                     "content_init": "telea", "refocus": False, "num_inference_steps": 2}]}))
    assert cli_main(["evaluate", "--config", str(config)]) == 0
    first = json.loads((tmp_path / "eval" / "lineage.json").read_text())["methods"]["MagicEraser"]
    assert first["export_digest"] == export_digest(train)
    shutil.rmtree(train)
    capsys.readouterr()
    assert cli_main(["evaluate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "method 'MagicEraser' was not evaluated" in err and "trained_dir" in err

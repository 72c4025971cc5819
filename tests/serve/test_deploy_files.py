"""cluster/serve-config.yaml and the KubeRay RayService hold a valid Ray Serve config whose builder builds the app."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _schema(data: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(data)


def test_serve_deploy_file_and_rayservice_agree_and_build(monkeypatch):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from magiceraser.serve.app import app_builder

    deploy = yaml.safe_load((ROOT / "cluster/serve-config.yaml").read_text())
    service = yaml.safe_load((ROOT / "cluster/eraser-rayservice.yaml").read_text())
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert _schema(deploy).applications[0].import_path == "magiceraser.serve.app:app_builder"
    assert _schema(embedded).applications == _schema(deploy).applications
    monkeypatch.chdir(ROOT)  # the args name configs/ relative to the workers' working directory
    args = dict(deploy["applications"][0]["args"])
    # No trained run in the repository: the same overrides with trained_dir cleared.
    args["overrides"] = [o if not o.startswith("trained_dir=") else "trained_dir=null" for o in args["overrides"]]
    app = call_user_app_builder_with_args_if_necessary(app_builder, args)
    ingress = app._bound_deployment  # Ingress.bind(eraser, cfg)
    eraser = ingress.init_args[0]._bound_deployment
    assert (ingress.name, eraser.name) == ("Ingress", "Eraser")
    assert eraser.ray_actor_options["num_gpus"] == 1 and eraser._deployment_config.autoscaling_config.max_replicas == 8
    assert eraser.max_queued_requests == 128 and eraser.max_ongoing_requests == 16
    assert ingress.max_ongoing_requests >= 8 * 16 + 128  # the eraser's queue, not the ingress, decides under load

"""``magiceraser serve``: the eraser as a Ray Serve application with an HTTP API and a browser page.

    magiceraser serve --config configs/erase/demo.yaml [--host H] [--port P] [key=value ...]

Reads the same config as ``magiceraser erase`` (plus optional ``serve.*`` keys), checks the model
folders before Ray starts, starts Ray (or joins the cluster in ``RAY_ADDRESS``), runs the
application, prints the page's URL and serves until Ctrl-C or SIGTERM, then shuts the application
down. On a cluster, ``serve deploy cluster/serve-config.yaml`` or the KubeRay RayService
(``cluster/eraser-rayservice.yaml``) run the same application without this command.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence

from magiceraser.errors import UserError
from magiceraser.serve.config import ServeConfig

__all__ = ["main", "url_of"]


def url_of(host: str, port: int) -> str:
    """The URL a user opens: a wildcard address is reached through localhost."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def start(cfg: ServeConfig) -> str:
    """Start Ray Serve on ``cfg.serve.host:port`` and run the application; returns the page's URL."""
    import ray
    from ray import serve

    from magiceraser.serve.app import build_app

    s = cfg.serve
    if not ray.is_initialized():
        # The driver and replicas import magiceraser from the same environment; replica warnings and
        # tracebacks reach this terminal, access logs do not (serve log level WARNING).
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": s.host, "port": s.port}, logging_config={"log_level": "WARNING"})
    serve.run(build_app(cfg), name=s.app_name, route_prefix="/", logging_config={"log_level": "WARNING"})
    return url_of(s.host, s.port)


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    before = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, before)


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli_args import config_argparser, load_cli_config
    from magiceraser.pipelines.erase import checks

    parser = config_argparser("serve", __doc__.split("\n\n")[0])
    parser.add_argument("--host", default=None, help="listen address (serve.host; default 127.0.0.1, 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (serve.port; default 8000)")
    args = parser.parse_args(argv)
    if args.host is not None:
        args.overrides = [*args.overrides, f"serve.host={args.host}"]
    if args.port is not None:
        args.overrides = [*args.overrides, f"serve.port={args.port}"]
    cfg = load_cli_config(ServeConfig, args)
    try:
        checks.check_models(cfg)  # a missing demo/train or model folder: one line, before Ray starts
    except checks.EraseUserError as exc:
        raise UserError(str(exc)) from exc
    url = start(cfg)
    print(f"MagicEraser is serving at {url}  (API docs: {url}docs; Ctrl-C stops it)", flush=True)
    try:
        _wait_for_stop()
    finally:
        from ray import serve

        serve.shutdown()
    return 0

"""``magiceraser serve``: the eraser as a Ray Serve application with an HTTP API and a browser page.

    magiceraser serve --config configs/erase/demo.yaml [--host H] [--port P] [key=value ...]

Reads the same config as ``magiceraser erase`` (plus optional ``serve.*`` keys), checks the model
folders and the HTTP port before Ray starts, starts a local Ray of its own (or joins the cluster
in ``RAY_ADDRESS``), runs the application, prints the page's URL and serves until Ctrl-C or
SIGTERM, then stops. On a cluster, ``serve deploy cluster/serve-config.yaml`` or the KubeRay
RayService (``cluster/eraser-rayservice.yaml``) run the same application without this command.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from magiceraser.errors import UserError
from magiceraser.serve.config import ServeConfig

__all__ = ["main", "start", "launch", "stop", "Service", "url_of", "check_port_free", "ray_address"]

#: Ray's switch between "this machine only" and "clusters" (on Linux it defaults to clusters). At 0,
#: Ray takes 127.0.0.1 as the node's address and its GCS, raylet, workers and agents listen on
#: loopback only, as on macOS and Windows (ray/_private/services.py get_node_ip_address).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: How long the driver's ray.shutdown() waits to flush task events to the GCS (Ray's default: 5 s).
#: After SIGTERM to the process group the GCS has died of that signal too, so the flush cannot
#: succeed and only added 5 s to the stop; with the GCS alive it takes milliseconds.
SHUTDOWN_FLUSH_TIMEOUT_MS = 200


def url_of(host: str, port: int) -> str:
    """The URL a user opens: a wildcard address is reached through localhost."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def ray_address() -> str:
    """What ``ray.init`` is given: the cluster in ``RAY_ADDRESS``, else ``"local"``, a Ray of our own.

    Not ``None``: that joins whatever cluster ``ray start`` last recorded in /tmp/ray (another
    user's, or a test's), which this command would then serve on and shut down parts of.
    """
    return os.environ.get("RAY_ADDRESS") or "local"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Raise a one-line UserError if Ray Serve's HTTP proxy could not listen on ``host:port``.

    Binds the way the proxy does (ray/serve/_private/http_util.py, start_asgi_http_server: the
    family from the address, no SO_REUSEADDR), so this refuses exactly what the proxy would refuse,
    seconds before Ray has started and without its tracebacks. The socket is closed at once.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name, resolved by bind() as the proxy does
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except socket.gaierror as exc:
            raise UserError(f"serve.host {host} is not a known address or host name ({exc.strerror}): "
                            "give an address of this machine with --host (127.0.0.1, 0.0.0.0)") from exc
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"serve.port {port} on {host} is in use by another program: "
                                "stop it or choose another port with --port") from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"serve.host {host} is not an address of this machine: "
                                "give one of its addresses, 127.0.0.1 or 0.0.0.0 with --host") from exc
            if exc.errno == errno.EACCES:
                raise UserError(f"serve.port {port} on {host} needs privileges this user lacks: "
                                "choose a port above 1023 with --port") from exc
            raise UserError(f"serve.host {host} / serve.port {port} cannot be listened on ({exc.strerror}): "
                            "choose another with --host / --port") from exc


@dataclass
class Service:
    """A running application: its URL and whether this process started the Ray it runs on."""

    url: str
    app_name: str
    owns_ray: bool


def start(cfg: ServeConfig) -> str:
    """:func:`launch`, returning the page's URL (as benchmarks/bench_serve.py uses it)."""
    return launch(cfg).url


def launch(cfg: ServeConfig) -> Service:
    """Start Ray Serve on ``cfg.serve.host:port`` and run the application (blocks until it is ready)."""
    s = cfg.serve
    address = ray_address()
    imported = sys.modules.get("ray")  # not imported yet: a refused port costs no Ray import
    owns_ray = address == "local" and not (imported is not None and imported.is_initialized())
    if owns_ray:
        # Only when the HTTP proxy will be ours, on this machine. Joining a cluster (RAY_ADDRESS), the
        # proxy runs on the cluster's head node, which may be another machine; and where Serve
        # already runs there, the port is held by Serve's own proxy and the running Serve keeps
        # its host and port (Ray logs that the new ones are ignored): checking here would refuse
        # a good setup or pass a bad one.
        check_port_free(s.host, s.port)
    import ray

    if owns_ray:
        # The driver and replicas import magiceraser from the same environment; replica warnings and
        # tracebacks reach this terminal, access logs do not (serve log level WARNING).
        ray.init(address=address, include_dashboard=False, logging_level="WARNING",
                 _system_config={"task_events_shutdown_flush_timeout_ms": SHUTDOWN_FLUSH_TIMEOUT_MS})
    elif not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING")
    client = _start_serve(s.host, s.port)
    _run_app(client, cfg)
    http = client.http_config  # on a joined cluster whose Serve already ran: its host and port, not ours
    return Service(url_of(http.host, http.port), s.app_name, owns_ray)


def _start_serve(host: str, port: int):
    """``serve.start`` (Serve's controller and HTTP proxy), returning its client.

    ``serve.run`` would start Serve itself, but with default HTTP options only; after
    ``serve.start(http_options=...)`` it "connects" to the Serve just started and logs "Connecting
    to existing Serve app ... New http_options will not be applied" (ray/serve/_private/api.py,
    serve_start), which is wrong here. So Serve is started once, and the application deployed
    through the client that start returned, as ``serve.run`` does (ray/serve/api.py, _run_many).
    """
    from ray.serve._private.api import serve_start

    return serve_start(http_options={"host": host, "port": port}, global_logging_config={"log_level": "WARNING"})


def _run_app(client, cfg: ServeConfig) -> None:
    """Deploy the application and wait until it is running (``serve.run`` minus its serve.start)."""
    import ray
    from ray.serve._private.build_app import build_app as build_serve_app

    from magiceraser.serve.app import build_app

    built = build_serve_app(
        build_app(cfg), name=cfg.serve.app_name, route_prefix="/", logging_config={"log_level": "WARNING"},
        default_runtime_env=ray.get_runtime_context().runtime_env,
    )
    client.deploy_applications([built], wait_for_ingress_deployment_creation=True, wait_for_applications_running=True)


def stop(service: Service | None) -> None:
    """Stop the application and leave Ray within seconds, whatever signal reached Ray's processes.

    A Ray this process started is the whole local cluster (GCS, raylet, the Serve controller, proxy
    and replicas), with nothing to save: ``ray.shutdown()`` ends all of it. ``serve.shutdown()``
    first is not needed, and after SIGTERM to the process group (``timeout``, systemd,
    Kubernetes) it waited 30 s for a controller already dead of that same signal ("Controller
    failed to shut down within 30.0s"). On a joined cluster only this application is deleted: the
    cluster's Serve, and other applications on it, keep running.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    if service is not None and not service.owns_ray:
        from ray import serve

        serve.delete(service.app_name)
    ray.shutdown()


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop_event = threading.Event()
    before = signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    try:
        while not stop_event.wait(0.5):
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
    if ray_address() == "local" and is_loopback(cfg.serve.host) and "ray" not in sys.modules:
        # A service for this machine only: keep Ray's own services on loopback too (Ray reads this
        # when it is imported, hence here, before; the replicas' internal gRPC servers still listen
        # on all interfaces, see the README).
        os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    service = None
    try:
        service = launch(cfg)
        print(f"MagicEraser is serving at {service.url}  (API docs: {service.url}docs; Ctrl-C stops it)", flush=True)
        _wait_for_stop()
    except KeyboardInterrupt:  # Ctrl-C while starting
        pass
    finally:
        stop(service)
    return 0

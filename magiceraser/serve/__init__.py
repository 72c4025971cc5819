"""The eraser as a service (``magiceraser serve``): Ray Serve, an HTTP API and a browser page.

    config.py    ServeConfig = EraseConfig + a ``serve`` section (replicas, GPUs, batching, queue, limits)
    requests.py  request parsing and validation as pure functions (ApiError: status, field, message)
    segments.py  segments for clients (RLE masks) and class-based masks, pure functions
    worker.py    EraserWorker: one replica's models and its batch of requests, without Ray
    app.py       the Ray Serve application: FastAPI ingress + eraser deployment (@serve.batch)
    cli.py       ``magiceraser serve``
    static/      the page (plain HTML/JS/CSS, served by the app)

Imports of this package stay light: Ray Serve and FastAPI are imported by ``app`` and ``cli`` only.
"""

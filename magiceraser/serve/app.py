"""The Ray Serve application: an HTTP ingress (FastAPI) in front of the eraser replicas.

    client ── HTTP ──> Ingress (FastAPI: decode, validate, PNG encode; no models)
                          │  DeploymentHandle, bounded queue (max_queued_requests)
                          v
                       Eraser replicas (MagicEraserPipeline + Mask2Former, @serve.batch)

Why two deployments: validation and image coding run next to the proxy, so a bad request is
refused without reaching a model replica, and the models' replicas (GPUs) only erase. The bound
on waiting requests is the Eraser deployment's ``max_queued_requests``, enforced at the
ingress's handle: when it is full the handle raises ``BackPressureError`` and the ingress answers
503 with ``Retry-After`` and a JSON body. The ingress itself accepts more requests than the
eraser can hold plus its queue, so under load it is the eraser's queue that decides; the ingress
has its own bound too (Ray's proxy then answers a plain-text 503, also with ``Retry-After``).

``build_app(cfg)`` is used by ``magiceraser serve``; :func:`app_builder` is the import path for
``serve run`` / ``serve deploy`` / KubeRay (``cluster/serve-config.yaml``).
"""

# No `from __future__ import annotations` here: FastAPI resolves the route signatures at runtime,
# and Ray Serve's ingress rebinds the methods, so string annotations would not resolve.
import asyncio
import base64
import json
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from magiceraser import __version__
from magiceraser.config import build_config, config_to_dict, load_config
from magiceraser.pipelines.erase.settings import settings_of
from magiceraser.serve.config import ServeConfig
from magiceraser.serve.requests import (
    THING_NAMES,
    ApiError,
    EraseParams,
    check_mask,
    decode_upload,
    decode_upload_mask,
    parse_erase_params,
)

__all__ = ["api", "EraserDeployment", "Ingress", "build_app", "app_builder", "STATIC_DIR"]

STATIC_DIR = Path(__file__).with_name("static")

api = FastAPI(
    title="MagicEraser",
    version=__version__,
    description=(
        "Erase objects from photos. `POST /api/erase` takes the photo and either a mask (white = erase) or "
        "`classes=person,car` (every object of those classes found by the panoptic segmenter); the answer is the "
        "erased PNG at the input's size, every pixel outside the dilated mask unchanged. Errors are JSON: "
        '`{"error": message, "field": name, "status": code}`.'
    ),
    # FastAPI's own /docs and /redoc load their scripts from a CDN (cdn.jsdelivr.net): a blank page
    # offline or in a cluster without internet. /docs is served below from static/; ReDoc is off.
    docs_url=None,
    redoc_url=None,
)
api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# Swagger UI from static/: swagger-ui-bundle.js, swagger-ui.css and the favicon are swagger-ui-dist
# 5.35.0 from npm, unmodified (licence: static/swagger-ui-LICENSE, swagger-ui-NOTICE and
# swagger-ui-bundle.js.LICENSE.txt). Swagger UI 5 is needed for FastAPI's OpenAPI 3.1 (the PyPI
# package swagger-ui-bundle ships 4.15, which refuses to render 3.1). FastAPI's self-hosting recipe,
# with the root_path prefix as FastAPI's own /docs has it (behind a proxy that strips a prefix).
@api.get("/docs", include_in_schema=False)
async def _swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=root + api.openapi_url,
        title=f"{api.title} - Swagger UI",
        oauth2_redirect_url=root + api.swagger_ui_oauth2_redirect_url,
        swagger_js_url=f"{root}/static/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/static/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/swagger-ui-favicon-32x32.png",
        # No badge from validator.swagger.io: the docs make no request to another host.
        swagger_ui_parameters={"validatorUrl": None},
    )


@api.get(api.swagger_ui_oauth2_redirect_url, include_in_schema=False)
async def _swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


def _error(status: int, field: str | None, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, "status": status}, status_code=status, headers=headers)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.field, exc.message)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
    field = loc[-1] if loc else None
    return _error(422, field, f"{field or 'request'}: {first.get('msg', 'invalid request')}")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, None, str(exc.detail), headers=getattr(exc, "headers", None))


def _busy(retry_after_s: int) -> JSONResponse:
    return _error(
        503, None, "the eraser is at capacity (its queue is full); retry after the Retry-After seconds",
        headers={"Retry-After": str(retry_after_s)},
    )


async def _read(upload: UploadFile | None, limit: int) -> bytes | None:
    """The bytes of an upload, at most ``limit + 1`` (enough to tell "too large")."""
    if upload is None:
        return None
    return await upload.read(limit + 1)


def _erase_headers(result: Any, seconds: float) -> dict[str, str]:
    """Response headers of a PNG answer; values are ASCII (prompt percent-encoded, lists as JSON)."""
    return {
        "X-Erase-Prompt": urllib.parse.quote(result.prompt, safe=" *#:,"),
        "X-Erase-Tag": urllib.parse.quote(result.tag or "", safe=" -"),
        "X-Erase-Regions": json.dumps(result.regions, ensure_ascii=True),
        "X-Erase-Segments": json.dumps(result.erased_segments, ensure_ascii=True),
        "X-Erase-Seconds": f"{seconds:.3f}",
        "X-Erase-Batch-Size": str(result.batch_size),
    }


@serve.deployment(name="Eraser")
class EraserDeployment:
    """One replica: the pipeline and the segmenter; requests arriving together are erased in one pass."""

    def __init__(self, cfg: dict[str, Any]):
        from magiceraser.serve.worker import EraserWorker

        self.cfg = build_config(ServeConfig, cfg)
        self.worker = EraserWorker(self.cfg)
        # One model call at a time per replica: the UNet's refocus state and the scheduler are per pipeline.
        self._models = threading.Lock()
        self.erase.set_max_batch_size(self.cfg.serve.max_batch_size)
        self.erase.set_batch_wait_timeout_s(self.cfg.serve.batch_wait_timeout_s)

    def _locked(self, fn, *args):
        with self._models:
            return fn(*args)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def erase(self, jobs: list) -> list:
        """A batch of EraseJob -> EraseResult or ApiError each (run off the event loop, which keeps queueing)."""
        return await asyncio.to_thread(self._locked, self.worker.erase_batch, list(jobs))

    async def segment(self, image) -> Any:
        """The full-image panoptic segmentation of ``image``, or an ApiError."""
        try:
            return (await asyncio.to_thread(self._locked, self.worker.segment, [image]))[0]
        except ApiError as exc:
            return exc

    def info(self) -> dict[str, Any]:
        return {"segmenter": self.worker.has_segmenter}


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP API and the page; no models here."""

    def __init__(self, eraser, cfg: dict[str, Any]):
        self.eraser = eraser
        self.cfg = build_config(ServeConfig, cfg)

    @api.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @api.get("/healthz", summary="Liveness and the service's limits and defaults")
    async def healthz(self) -> dict[str, Any]:
        c, s = self.cfg, self.cfg.serve
        return {
            "status": "ok", "version": __version__, "segmenter": bool(c.segmenter), "classes": list(THING_NAMES),
            "max_pixels": s.max_pixels, "max_upload_bytes": s.max_upload_bytes, "max_steps": s.max_steps,
            "defaults": {"steps": c.num_inference_steps, "strength": c.strength, "seed": c.seed, "refocus": c.refocus,
                         "mask_dilation": c.mask_dilation, "class_mask_dilation": s.class_mask_dilation},
        }

    @api.post(
        "/api/erase",
        summary="Erase the masked objects (or every object of the given classes); answers the erased PNG",
        responses={200: {"content": {"image/png": {}}, "description": "the erased image, the input's size"},
                   422: {"description": "bad input (JSON names the field)"}, 503: {"description": "queue full (Retry-After)"}},
    )
    async def erase(
        self,
        image: UploadFile | None = File(None, description="the photo (PNG, JPEG, WebP, ...)"),
        mask: UploadFile | None = File(None, description="white = erase, the image's size; or use classes"),
        classes: str | None = Form(None, description="instead of a mask: COCO thing classes, e.g. person,car"),
        steps: str | None = Form(None, description="integer: scheduler steps (default from the config)"),
        strength: str | None = Form(None, description="number in (0, 1]: noise level of the start"),
        seed: str | None = Form(None, description="integer seed of the starting noise"),
        refocus: str | None = Form(None, description="true/false: the attention refocus"),
        tag: str | None = Form(None, description="background tag, e.g. grass (default: from segmentation)"),
        prompt: str | None = Form(None, description="the whole prompt (default: 'A photo of R* {tag}')"),
        format: str = Query("png", description="png: the image with X-Erase-* headers; json: base64 PNG + details"),
    ) -> Response:
        t0 = time.perf_counter()
        s = self.cfg.serve
        if format not in ("png", "json"):
            raise ApiError(422, "format", f"format must be png or json, got {format!r}")
        params: EraseParams = parse_erase_params(steps, strength, seed, refocus, tag, prompt, classes, max_steps=s.max_steps,
                                                 base=settings_of(self.cfg))  # checked over this service's settings
        mask_data = await _read(mask, s.max_upload_bytes)
        if mask_data is not None and params.classes:
            raise ApiError(400, "classes", "send either a mask or classes, not both")
        if mask_data is None and not params.classes:
            raise ApiError(400, "mask", "mask is missing: send a mask file (white = erase) or classes=person,car")
        if params.classes and not self.cfg.segmenter:
            raise ApiError(422, "classes", "this service has no segmenter, so classes= cannot be used; send a mask")
        img = decode_upload(await _read(image, s.max_upload_bytes), s.max_pixels, s.max_upload_bytes)
        m = None
        if mask_data is not None:
            m = decode_upload_mask(mask_data, s.max_upload_bytes, self.cfg.mask_threshold)
            check_mask(img, m, self.cfg.min_region_area)
        from magiceraser.serve.worker import EraseJob

        try:
            result = await self.eraser.erase.remote(EraseJob(img, m, params))
        except BackPressureError:
            return _busy(s.retry_after_s)
        if isinstance(result, ApiError):
            raise result
        seconds = time.perf_counter() - t0
        from magiceraser.imageio import encode_image

        png = encode_image(result.image, "png")
        if format == "json":
            return JSONResponse({
                "image_png_base64": base64.b64encode(png).decode("ascii"), "width": img.shape[1], "height": img.shape[0],
                "prompt": result.prompt, "tag": result.tag, "regions": result.regions,
                "erased_segments": result.erased_segments, "seconds": round(seconds, 3), "batch_size": result.batch_size,
            })
        return Response(png, media_type="image/png", headers=_erase_headers(result, seconds))

    @api.post("/api/segment", summary="Panoptic segments of an image (to select objects by click)")
    async def segment(
        self,
        image: UploadFile | None = File(None, description="the photo"),
        masks: str = Query("rle", description="segment masks as rle (row-major run lengths) or png (base64)"),
    ) -> JSONResponse:
        s = self.cfg.serve
        if masks not in ("rle", "png"):
            raise ApiError(422, "masks", f"masks must be rle or png, got {masks!r}")
        if not self.cfg.segmenter:
            raise ApiError(501, "segmenter", "this service has no segmenter (set segmenter in its config)")
        img = decode_upload(await _read(image, s.max_upload_bytes), s.max_pixels, s.max_upload_bytes)
        try:
            pan = await self.eraser.segment.remote(img)
        except BackPressureError:
            return _busy(s.retry_after_s)
        if isinstance(pan, ApiError):
            raise pan
        from magiceraser.serve.segments import segments_payload

        return JSONResponse({"width": img.shape[1], "height": img.shape[0], "segments": segments_payload(pan, masks)})


def build_app(cfg: ServeConfig):
    """The application for ``cfg``: replicas, GPUs, autoscaling, batching and queue bounds from ``cfg.serve``."""
    s = cfg.serve
    data = config_to_dict(cfg)
    eraser_opts: dict[str, Any] = dict(
        ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        backpressure_config={"retry_after_s": s.retry_after_s},
    )
    if s.autoscaling:
        eraser_opts["autoscaling_config"] = {
            "min_replicas": s.min_replicas, "max_replicas": s.max_replicas, "target_ongoing_requests": s.target_ongoing_requests,
            "initial_replicas": max(1, s.min_replicas),
        }
        most = s.max_replicas
    else:
        eraser_opts["num_replicas"] = s.num_replicas
        most = s.num_replicas
    # The ingress takes everything the eraser can hold and queue (and a margin for /healthz, /api/segment
    # and the page) so that under load the eraser's bounded queue answers with the JSON 503. Its own
    # queue is as long: Ray counts a request as queued while the proxy is still assigning it to a
    # replica, so a short ingress queue would refuse a burst that the eraser could take.
    ingress_capacity = most * s.max_ongoing_requests + s.max_queued_requests + 16
    eraser = EraserDeployment.options(**eraser_opts).bind(data)
    return Ingress.options(
        num_replicas=s.ingress_replicas, max_ongoing_requests=ingress_capacity, max_queued_requests=ingress_capacity,
        backpressure_config={"retry_after_s": s.retry_after_s}, ray_actor_options={"num_cpus": 0},
    ).bind(eraser, data)


def app_builder(args: dict[str, Any]):
    """``serve run magiceraser.serve.app:app_builder config=configs/erase/x.yaml`` (also the KubeRay import path).

    ``args``: ``config`` (YAML path, relative to the working directory) and ``overrides`` (a list of
    ``key=value`` strings, or one string separated by spaces).
    """
    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = overrides.split()
    return build_app(load_config(ServeConfig, args.get("config"), list(overrides)))

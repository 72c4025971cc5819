"""``ServeConfig``: an eraser config (``configs/erase/*.yaml``) plus a ``serve`` section for the service.

The service reads the same file as ``magiceraser erase`` so a user serves exactly the model and
settings they erase with; only the ``serve:`` keys (replicas, GPUs, batching, queue, limits) are
new, and all of them have defaults, so ``configs/erase/demo.yaml`` serves as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from magiceraser.pipelines.erase.config import EraseConfig

__all__ = ["ServeSettings", "ServeConfig"]


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    """Address the HTTP proxy listens on; 0.0.0.0 to accept other machines (--host)."""
    port: int = 8000
    """HTTP port (--port)."""
    app_name: str = "magiceraser"
    """Name of the Ray Serve application (serve status, serve shutdown)."""
    num_replicas: int = 1
    """Eraser replicas (each holds the pipeline and the segmenter); ignored with autoscaling."""
    num_gpus: float = 0.0
    """GPUs per eraser replica (0.5 packs two replicas on one GPU); 0 on CPU machines."""
    num_cpus: float = 1.0
    """CPUs Ray reserves per eraser replica."""
    autoscaling: bool = False
    """Let Ray Serve scale the eraser replicas between min_replicas and max_replicas."""
    min_replicas: int = 1
    """Autoscaling: fewest eraser replicas (0 scales to zero when idle)."""
    max_replicas: int = 4
    """Autoscaling: most eraser replicas."""
    target_ongoing_requests: float = 4.0
    """Autoscaling: requests per replica (running + in its batch queue) Ray Serve aims for."""
    max_batch_size: int = 8
    """Requests erased together in one pass (their crops share UNet batches); 1 turns batching off."""
    batch_wait_timeout_s: float = 0.01
    """How long a replica waits for a batch to fill before it starts with what it has."""
    max_ongoing_requests: int = 8
    """Requests one eraser replica holds at once (running or waiting for its batch); at least max_batch_size."""
    max_queued_requests: int = 32
    """Requests waiting for a free replica slot; beyond them the answer is 503 with Retry-After."""
    retry_after_s: int = 2
    """Seconds the Retry-After header of a 503 (queue full) asks a client to wait."""
    ingress_replicas: int = 1
    """Replicas of the HTTP ingress (decoding, validation, PNG encoding; no models)."""
    max_pixels: int = 16_000_000
    """Largest image (width × height) the API accepts; larger uploads get 413."""
    max_upload_bytes: int = 64_000_000
    """Largest uploaded file in bytes; larger uploads get 413."""
    max_steps: int = 200
    """Largest num_inference_steps a request may ask for."""
    class_mask_dilation: int = 4
    """Pixels a classes= mask (the union of the chosen segments) is grown by before erasing."""
    segment_threshold: float = 0.5
    """Mask2Former: minimum class score of a segment (transformers' post-processing threshold)."""
    segment_mask_threshold: float = 0.5
    """Mask2Former: sigmoid level a pixel's mask logit must reach to belong to a query's mask."""
    segment_overlap_threshold: float = 0.8
    """Mask2Former: share of a query's mask it must keep after overlaps to become a segment."""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("num_replicas", "max_batch_size", "max_ongoing_requests", "max_queued_requests", "ingress_replicas",
                     "max_pixels", "max_upload_bytes", "max_steps", "max_replicas"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError("num_gpus and num_cpus must be >= 0")
        if self.min_replicas < 0 or self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas must be in 0..max_replicas ({self.max_replicas}), got {self.min_replicas}")
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size ({self.max_batch_size}): "
                "a replica never holds enough requests to fill a batch otherwise"
            )
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.class_mask_dilation < 0:
            raise ValueError(f"class_mask_dilation must be >= 0, got {self.class_mask_dilation}")
        for name in ("segment_threshold", "segment_mask_threshold", "segment_overlap_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class ServeConfig(EraseConfig):
    serve: ServeSettings = field(default_factory=ServeSettings)
    """The service: replicas, GPUs, batching, queue and request limits."""

"""Every benchmark goal of magiceraser, in one table: each script and the GPU acceptance run read it.

A goal is a comparison of one measured figure against a threshold (most are ratios against a
baseline measured in the same run). No goal number is written anywhere else under benchmarks/:
scripts print ``GOALS[name].text()`` and judge with ``GOALS[name].met(value)``. Where two scripts
once disagreed, the choice and its reason are in benchmarks/README.md ("Goals"), whose goal table
is ``python benchmarks/goals.py`` (a test keeps the two equal).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Goal:
    name: str
    what: str  # the measured figure, with the conditions it is measured under
    op: str  # "<=", "<", ">=", ">"
    threshold: float
    unit: str  # "x" for a ratio
    source: str  # where the number comes from, and why

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)

    def text(self) -> str:
        """``<= 1.2x``, ``>= 80 images/s``, ``< 0.01``."""
        unit = "x" if self.unit == "x" else f" {self.unit}" if self.unit else ""
        return f"{self.op} {self.threshold:g}{unit}"


_ALL = [
    # ------------------------------------------------------------------ eraser: refocus, erase
    Goal("refocus_cpu_time", "refocused_attention / stock SDPA, process CPU time, 1 thread, B=2 H=8 N=4096 d=40",
         "<=", 1.3, "x", "issue 14 (tightened from 1.5x, the goal when bench_refocus was added in 8591692)"),
    Goal("refocus_memory", "peak working memory of refocused_attention / the full-matrix Eq. 5-9, same inputs",
         "<=", 0.25, "x", "8591692: the refocus holds no N×N score or mask matrix"),
    Goal("refocus_error_fp16", "largest absolute error of refocused_attention in float16 vs the float64 Eq. 5-9",
         "<", 1e-2, "", "6df98ff (issue 14): ~10x float16's rounding of unit-sized outputs; a wrong term is >> 1e-2"),
    Goal("refocus_error_fp32", "largest absolute error of refocused_attention in float32 vs the float64 Eq. 5-9",
         "<", 1e-4, "", "6df98ff (issue 14): the CPU smoke run's check; float32 rounding is ~1e-7"),
    Goal("erase_refocus_overhead", "eraser with refocus on / refocus off, same run and settings",
         "<=", 1.2, "x", "8591692: the refocus adds at most a fifth to the whole erase"),
    Goal("erase_vs_stock", "eraser, refocus on / stock diffusers StableDiffusionInpaintPipeline, same components",
         "<=", 1.2, "x", "6df98ff (issue 14): the eraser adds at most a fifth to plain SD inpainting"),
    Goal("erase_seconds_gpu", "eraser, refocus on: 512², 50 steps, strength 1.0, CFG, fp16, one H100/H200",
         "<=", 1.0, "s/image", "6df98ff (issue 14); supersedes bench_erase's 1.5 s of 8591692 (benchmarks/README.md)"),
    # ------------------------------------------------------------------ trainer
    Goal("train_images_per_s_gpu", "training step, full-size SD 1.5, 512², bf16, LoRA + v*, latent cache, one H100/H200",
         ">=", 80, "images/s", "6df98ff (issue 14); supersedes bench_train_gpu's 40 of 875d097 (benchmarks/README.md)"),
    Goal("train_loop_overhead", "Trainer step / a bare PyTorch loop doing the same work, tiny model, CPU",
         "<=", 1.10, "x", "875d097: the trainer's bookkeeping costs at most a tenth of a step"),
    Goal("resume_first_batch", "first batch after a resume at step 10,000 / at step 10",
         "<=", 1.2, "x", "76eb032: a resume reads one shuffle window, whatever the step"),
    # ------------------------------------------------------------------ data engine
    Goal("olrd_compose", "compose stage images/s / the decode + encode floor",
         ">=", 0.8, "x", "dba5cb4: composing costs at most a quarter on top of the unavoidable image coding"),
    Goal("olrd_job_speedup", "serial loop / Ray job per-image time in steady state, 2 CPUs",
         ">=", 1.5, "x", "1661dac: the job's stages overlap on the machine's CPUs"),
    Goal("olrd_job_flat", "Ray job at 2000 / at 200 images: peak memory, and per-image time",
         "<=", 1.10, "x", "1661dac: the job streams (memory and per-image cost flat in N)"),
    Goal("olrd_driver_per_input", "driver's per-input cost of starting work, 1M / 10K inputs",
         "<=", 1.5, "x", "issue 12 (f8bf327): Places2 has 1.8M images"),
    Goal("olrd_driver_seconds", "1M inputs listed and planned (list + fingerprint + scan + plan)",
         "<", 60, "s", "issue 12 (f8bf327)"),
    Goal("olrd_driver_memory", "peak memory of the driver process after planning 1M inputs",
         "<", 2, "GiB", "issue 12 (f8bf327)"),
    Goal("olrd_driver_resume", "resume with 99% of the shards done: starts work / listing alone",
         "<=", 2, "x", "issue 12 (f8bf327)"),
    # ------------------------------------------------------------------ service
    Goal("serve_latency", "service p50 latency at 1 client / the plain pipeline loop's p50",
         "<=", 1.15, "x", "19278e3: HTTP, PNG coding, Ray hops and the batch wait are the only additions"),
    Goal("serve_throughput", "service requests/s at 16 clients / the plain pipeline loop's",
         ">=", 1.3, "x", "19278e3: batched crops share UNet calls"),
]

GOALS: dict[str, Goal] = {goal.name: goal for goal in _ALL}


def markdown() -> str:
    """The goal table of benchmarks/README.md."""
    lines = ["| goal | measured figure | target | source |", "| --- | --- | --- | --- |"]
    lines += [f"| `{g.name}` | {g.what} | {g.text()} | {g.source} |" for g in GOALS.values()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())

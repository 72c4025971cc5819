"""The cluster image: every manifest names the image ``cluster/image/Dockerfile`` builds, the recipe's
requirement list is pyproject's, and (slow) the recipe really builds and runs ``magiceraser demo``.

No container registry is reachable from these machines, so the build test makes its own base:
``debootstrap --variant=minbase bookworm`` (Debian's mirror) with Python 3.11, imported into
buildah as ``localhost/magiceraser-test-base:<tag>`` and passed as ``BASE_IMAGE``. torch is the CPU
wheel this machine's pip configuration provides: the pip configuration files and the local
folders they name are mounted into the build (read-only), nothing else of the host. The base and
the dependency layers are cached (``$XDG_CACHE_HOME/magiceraser/image-test`` and buildah's layer
cache), so a rebuild after a code change redoes only the package's own layer. ``.ci/run`` installs
buildah and debootstrap when missing (as root); elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from demo_alarms import alarms_in

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "cluster" / "image" / "Dockerfile"
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates", "libglib2.0-0", "libgomp1")
MIRROR = "http://deb.debian.org/debian"


def _image_name() -> str:
    """The Makefile's IMAGE default with the package version: the name the manifests must carry."""
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    default = re.search(r"^IMAGE \?= (\S+)", makefile, re.M).group(1)
    return default.replace("$(VERSION)", version)


def _images(node) -> list[str]:
    """Every ``image:`` value in a parsed manifest."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_every_manifest_names_the_image_the_recipe_builds():
    name = _image_name()
    assert name.endswith(":0.1.0") or ":" in name
    found = {}
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for image in _images(doc):
                found.setdefault(path.name, set()).add(image)
    assert set(found) >= {"olrd-rayjob.yaml", "train-rayjob.yaml", "eraser-rayservice.yaml", "ray-cluster.yaml"}
    assert {f: images for f, images in found.items() if images != {name}} == {}
    readme = (ROOT / "cluster" / "README.md").read_text()
    assert "make image" in readme and "make push-image" in readme


def test_the_recipe_installs_pyprojects_requirements():
    import tomllib

    sys.path.insert(0, str(ROOT / "cluster" / "image"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = requirements(str(ROOT / "pyproject.toml"), "vllm,s3")
    assert reqs[: len(project["dependencies"])] == project["dependencies"]
    assert "vllm==0.32.0" in reqs and any(r.startswith("s3fs") for r in reqs)
    assert requirements(str(ROOT / "pyproject.toml"), "") == project["dependencies"]
    with pytest.raises(SystemExit, match="unknown extras"):
        requirements(str(ROOT / "pyproject.toml"), "cuda")


# ---------------------------------------------------------------- the build


def _run(*cmd: str, timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)


def _need_tools() -> None:
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: install Debian's buildah and debootstrap (.ci/run does, as root)")
    if os.geteuid() != 0:
        pytest.skip("building with buildah --isolation chroot and debootstrap needs root")


def _pip_mounts() -> list[str]:
    """``-v`` arguments that give the build this machine's pip configuration: its config files and every
    local path they (or PIP_* variables) name; the build's pip then finds the same CPU torch wheel."""
    proc = _run(sys.executable, "-m", "pip", "config", "debug")
    files = [Path(m) for m in re.findall(r"^\s+(/\S+), exists: True", proc.stdout, re.M)]
    values = re.findall(r"^\s+\S+: (.+)$", proc.stdout, re.M)
    values += [v for k, v in os.environ.items() if k.startswith("PIP_")]
    paths = set(files)
    for value in values:
        for word in value.split():
            index = word.startswith("file://")  # a file index's pages link to files beside it (../../files/...)
            word = word.removeprefix("file://").rstrip("/")
            if word.startswith("/") and Path(word).exists():
                paths.add(Path(word).parent if index else Path(word))
    paths.add(Path("/etc/ssl/certs"))  # the registry's certificate chain as this machine trusts it
    mounts = []
    for path in sorted(paths):
        mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def _base_image(cache: Path) -> str:
    """A Debian bookworm base with Python, built once per package list (debootstrap, then buildah)."""
    tag = hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:12]
    name = f"localhost/magiceraser-test-base:bookworm-{tag}"
    if _run("buildah", "images", "-q", name).stdout.strip():
        return name
    work = cache / f"base-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    proc = _run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
                str(work / "rootfs"), MIRROR, timeout=1200)
    if proc.returncode:
        pytest.skip(f"debootstrap could not make a bookworm base (no Debian mirror?): {proc.stderr.strip()[-300:]}")
    _run("tar", "-C", str(work / "rootfs"), "-cf", str(work / "rootfs.tar"), ".", check=True)
    (work / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n')
    _run("buildah", "bud", "--isolation", "chroot", "-q", "-t", name, str(work), check=True)
    shutil.rmtree(work)
    return name


@pytest.mark.slow
def test_the_image_builds_and_runs_the_demo(tmp_path_factory):
    _need_tools()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "magiceraser" / "image-test"
    (cache / "pip").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    base = _base_image(cache)
    t_base = time.monotonic() - t0
    tag = "localhost/magiceraser:ci-test"
    t0 = time.monotonic()
    proc = _run("buildah", "bud", "--isolation", "chroot", "--layers", "-f", str(DOCKERFILE),
                "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "EXTRAS=s3", "--build-arg", "PIP_ARGS=",
                *_pip_mounts(), "-v", f"{cache / 'pip'}:/root/.cache/pip", "-t", tag, str(ROOT), timeout=1800)
    t_build = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # its last step ran the checks (or a cached layer did)
    config = json.loads(_run("buildah", "inspect", "--type", "image", tag, check=True).stdout)["OCIv1"]["config"]
    assert config["User"] == "ray" and config["WorkingDir"] == "/home/ray"  # as Ray's images run
    size = _run("buildah", "images", "--format", "{{.Size}}", tag, check=True).stdout.strip()
    container = _run("buildah", "from", tag, check=True).stdout.strip()
    try:
        t0 = time.monotonic()
        script = ("set -e; python -m magiceraser.install_check; magiceraser --help >/dev/null; "
                  "mkdir -p /home/ray/w && cd /home/ray/w && cp -r /opt/magiceraser/configs . && "
                  "magiceraser demo > demo.log 2>&1 || { tail -40 demo.log; exit 1; }; "
                  "cat demo.log >&2; cat demo/eval/results.md; python -c \"import json; print(json.load(open('demo/train/magiceraser.json'))['token'])\"")
        run = _run("buildah", "run", "--isolation", "chroot", container, "--", "bash", "-c", script, timeout=900)
        t_demo = time.monotonic() - t0
    finally:
        _run("buildah", "rm", container)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = run.stdout
    assert run.stdout.startswith("magiceraser install check: ok")  # the image's torch and (absent) torchvision agree
    assert "| Dataset | Method | PSNR↑" in table and "ReMOVE↑" in table and "| OLRD-demo | Telea |" in table
    assert run.stdout.strip().splitlines()[-1] == "<magiceraser-bg>"  # the demo's trained export, inside the image
    assert "Demo finished." in run.stderr and not alarms_in(run.stderr)  # as tests/test_quiet.py checks on the host
    print(f"\nimage {tag}: base {t_base:.0f} s, build {t_build:.0f} s, size {size}, demo inside {t_demo:.0f} s")

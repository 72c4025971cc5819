# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# The environment is created on first use. torch is installed first with an exact pin: on a
# CPU-only machine with a local CPU wheel pip takes that; on a GPU machine with internet the
# same pin resolves to PyPI's CUDA build. constraints.txt keeps every later install on it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
EXTRAS ?= dev,eval

.PHONY: env demo test test-numeric lint clean-demo bench image push-image

# The cluster image (cluster/image/Dockerfile): every manifest in cluster/ names this image. Set IMAGE
# to your registry's path; BUILDER may be docker, podman or buildah (all take `build -f ... -t ...`).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= ghcr.io/YOUR-ORG/magiceraser:$(VERSION)
BUILDER ?= docker

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	# torch-fidelity's Inception (FID) is plain torch, but the package declares torchvision: skip deps.
	$(PIP) install -q --no-deps "torch-fidelity>=0.3,<0.5"
	# torchvision is never needed; the vllm extra brings it, which works on GPU nodes (built for the same
	# torch) and not on CPU-only ones: the check fails only on a torchvision that does not work here.
	$(PY) -m magiceraser.install_check
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m magiceraser demo

test: $(STAMP)
	$(PY) -m pytest -q

# The numerically sensitive tests again on torch's portable kernels: a test whose result depends
# on the CPU's vector extensions (AVX-512 vs AVX2) shows itself on every machine.
test-numeric: $(STAMP)
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m numeric

lint: $(STAMP)
	$(PY) -m ruff check magiceraser tests benchmarks

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean-demo:
	rm -rf demo

image:
	$(BUILDER) build -f cluster/image/Dockerfile -t $(IMAGE) .

push-image:
	$(BUILDER) push $(IMAGE)

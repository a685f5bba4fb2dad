#!/usr/bin/env bash
# The GPU issue's device check in one command (bench/gpu_check.py says what it measures).
#
#   bash bench/gpu_check.sh --prepare   # here: wheels the GPU machine lacks into .whl/, the rows into .gpu-data/
#   bash bench/gpu_check.sh             # there (device tool, carry .whl and .gpu-data); here it runs on CPU, quick
#
# Writes $OUT/summary.json (one JSON object, also printed last), $OUT/check.log and $OUT/pytest.log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "--prepare" ]; then
  # Not on the GPU machine (torch, transformers, peft, accelerate, pandas, pyarrow, tokenizers, anyio, h11, click,
  # prometheus-client, pytest-xdist are). Each at the version installed here, where the suite passes; fastapi at
  # 0.140.0, which imports without opentelemetry (0.150 and later require it; the device has none).
  missing="datasets dill multiprocess optuna optuna-dashboard alembic colorlog sqlalchemy greenlet mako bottle
    starlette pydantic pydantic-core annotated-types typing-inspection uvicorn"
  mkdir -p .whl .gpu-data
  for name in $missing fastapi; do
    version=$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
    [ "$name" = fastapi ] && version=0.140.0
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$name${version:+==$version}"
  done
  cp ../shared/data/ag_news/train.csv .gpu-data/train.csv
  du -sh .whl .gpu-data
  exit 0
fi

if ! python3 -c "import datasets, optuna, optuna_dashboard, fastapi, uvicorn" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
command -v loralab >/dev/null || { mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 -m loralab.cli "$@"\n' >/tmp/bin/loralab;
  chmod +x /tmp/bin/loralab; export PATH="/tmp/bin:$PATH"; }

data=${DATA:-.gpu-data/train.csv}
[ -f "$data" ] || data=../shared/data/ag_news/train.csv
python3 bench/gpu_check.py --data "$data" --out "$OUT" "$@"

# The tests that need the device (CHECK_TESTS=pytest arguments, e.g. "-m cuda"); their closing line joins the summary.
[ -n "${CHECK_TESTS:-}" ] || exit 0
# shellcheck disable=SC2086
python3 -m pytest $CHECK_TESTS -q -p no:cacheprovider >"$OUT/pytest.log" 2>&1 || true
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = json.loads((out / "summary.json").read_text())
summary["pytest"] = (out / "pytest.log").read_text().strip().splitlines()[-1]
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary))
PY

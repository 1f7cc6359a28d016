#!/usr/bin/env bash
# Create .venv and install nx_dagster into it. `--test` adds the test dependencies.
#
# PyTorch is installed first, on its own, so that pip never swaps it for another build:
#   * default: torch==2.13.0 (on this project's CI machines a CPU wheel that lies on local disk;
#     on a Linux machine with an NVIDIA GPU, PyPI's torch==2.13.0 wheel is the CUDA build);
#   * NX_TORCH overrides the requirement, e.g. a CPU-only laptop that wants a small download:
#       NX_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" bash scripts/setup.sh
#   * a torch already importable in .venv is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
say() { echo "setup: $*" >&2; }
if ! python -c "import torch" >/dev/null 2>&1; then
  say "installing PyTorch (${NX_TORCH:-torch==2.13.0}): a large download, often a few minutes"
  # shellcheck disable=SC2086
  python -m pip install -q ${NX_TORCH:-torch==2.13.0}
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
say "installing nx_dagster${extras} and its dependencies (Dagster, DuckDB, ...): 1-4 minutes"
python -m pip install -q -e ".${extras}"
# Compile the recorder's fused CPU kernel now (numba caches it beside the module) rather than in the first run.
say "compiling the recorder's CPU kernel (numba, about 30 s, once)"
python -c "from nx_dagster.activations import cpu_kernel; cpu_kernel.warm()"
python -c "import torch, duckdb, dagster; print(f'nx_dagster ready: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), duckdb {duckdb.__version__}, dagster {dagster.__version__}')"

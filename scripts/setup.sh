#!/usr/bin/env bash
# Creates .venv and installs mlsharp with its test tools. Idempotent.
#
# torch is installed first and pinned, because pip resolving plain `torch` on a machine
# without it can pull a multi-GB CUDA build. GPU users pick their build with TORCH_SPEC
# and TORCH_INDEX_URL, e.g.
#   TORCH_SPEC=torch TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC:-torch==2.13.0}"
fi
"${pip[@]}" -e ".[dev]"
echo "mlsharp installed in .venv ($(.venv/bin/mlsharp --version))"

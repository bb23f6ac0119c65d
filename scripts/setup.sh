#!/usr/bin/env bash
# Creates .venv and installs mlsharp with its test tools. Idempotent.
#
# torch is installed first and pinned, because pip resolving plain `torch` on a machine
# without it can pull a multi-GB CUDA build. GPU users pick their build with TORCH_SPEC
# and TORCH_INDEX_URL, e.g.
#   TORCH_SPEC=torch TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 scripts/setup.sh
# The Python is $PYTHON, else the first of python3.13 ... python3.10, python3 that is
# 3.10 or newer (macOS's own /usr/bin/python3 is 3.9: torch 2.13 has no wheel for it).
# Windows: scripts/setup.ps1.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

supported() {  # is "$1" a Python 3.10 or newer?
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}

if [ ! -x .venv/bin/python ]; then
  python=${PYTHON:-}
  if [ -z "$python" ]; then
    for candidate in python3.13 python3.12 python3.11 python3.10 python3; do
      if command -v "$candidate" >/dev/null && supported "$candidate"; then
        python=$candidate
        break
      fi
    done
  fi
  if [ -z "$python" ] || ! supported "$python"; then
    found=$("${python:-python3}" --version 2>&1 || echo "no python3")
    echo "setup.sh: mlsharp needs Python 3.10 or newer (found: ${python:-python3}: $found)." >&2
    case "$(uname -s)" in
      Darwin) echo "  Install one, e.g. 'brew install python@3.12' or the python.org installer," >&2 ;;
      *) echo "  Install one, e.g. 'sudo apt-get install python3.11 python3.11-venv'," >&2 ;;
    esac
    echo "  then run: PYTHON=python3.12 scripts/setup.sh" >&2
    exit 1
  fi
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC:-torch==2.13.0}"
fi
"${pip[@]}" -e ".[dev]"
echo "mlsharp installed in .venv ($(.venv/bin/mlsharp --version))"

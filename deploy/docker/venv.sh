#!/bin/sh
# Builds the image's virtualenv /opt/quantroute in the Dockerfile's build stages. pip runs from
# its own virtualenv (/opt/pip); /opt/quantroute gets no pip, setuptools or wheel.
#
#   venv.sh deps [EXTRAS] the dependencies pyproject.toml lists: the project's and those of the
#                         extras named (comma- or space-separated, may be empty),
#                         then: debug symbols out of the compiled extensions (not auditwheel's
#                         vendored *.libs, which strip breaks), every shared object must still
#                         load, what only type checkers and C compilers read taken out (type
#                         stubs *.pyi: 4 MB in kubernetes-asyncio alone; Cython and C sources),
#                         and bytecode compiled in (the image's user cannot write it, and
#                         compiling at each start costs seconds)
#   venv.sh package       quantroute itself, nothing the deps step did not install (pip check),
#                         its bytecode; its files are also staged under /opt/quantroute-package,
#                         so the image holds them as a layer of their own above the dependencies
set -eu
venv=/opt/quantroute
pip() { /opt/pip/bin/pip --python "$venv/bin/python" "$@"; }
compile() { "$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$@"; }
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")

case "${1:-}" in
  deps)
    python - "${2:-}" > /tmp/requirements.txt <<'EOF'
import sys, tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1].replace(",", " ").split():
    requirements += project["optional-dependencies"][extra]
print(*requirements, sep="\n")
EOF
    pip install --no-compile -r /tmp/requirements.txt
    find "$venv" -name '*.so' ! -path '*.libs/*' -exec strip --strip-unneeded {} +
    # os._exit: libraries loaded without their module's initialisation must not run finalisers.
    "$venv/bin/python" -c "import ctypes, os, pathlib; [ctypes.CDLL(str(p)) for p in pathlib.Path('$venv').rglob('*.so')]; os._exit(0)"
    find "$site" -type f \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \
      -o -name '*.c' -o -name '*.h' \) -delete
    compile "$site"
    ;;
  package)
    pip install --no-compile --no-deps .
    pip check
    compile "$site/quantroute"
    "$venv/bin/quantroute" --help > /dev/null
    mkdir -p /opt/quantroute-package
    cd / && tar -cf - "${site#/}/quantroute" "${site#/}"/quantroute-*.dist-info "${venv#/}/bin/quantroute" \
      | tar -xf - -C /opt/quantroute-package
    ;;
  *)
    echo "usage: venv.sh deps [EXTRA] | venv.sh package" >&2
    exit 2
    ;;
esac

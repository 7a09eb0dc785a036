#!/usr/bin/env bash
# The two ways to install the Python binding (issue 11; README.md, "Python"), each checked end
# to end: the installed package, imported from where it was installed by a fresh interpreter
# outside the source and build trees, opens a cache of a private khalad, writes through it and
# reads the value back from L1.
#
#   check_python.sh install CMAKE BUILD_DIR PYTHON KHALAD
#       `cmake --install --component python` into a DESTDIR, with prefix /usr/local and /usr:
#       the package lands in a directory that PYTHON has on sys.path for that prefix
#       (/usr/local/lib/python3.11/dist-packages, /usr/lib/python3/dist-packages for Debian's),
#       with every .py of bindings/python/khala_cache and an extension that needs nothing of
#       the build tree (ldd: nothing "not found", no path into BUILD_DIR).
#   check_python.sh pip SOURCE_DIR PYTHON KHALAD
#       `pip install --no-build-isolation --no-index` of a copy of bindings/python (with the
#       repository around it that setup.py reads) into `PYTHON -m venv --system-site-packages`:
#       Debian's pip refuses to install into the system (PEP 668), a venv is the way. Exit 77
#       (CTest: skipped) when PYTHON has no venv, pip or setuptools (scripts/deps.sh installs
#       python3-venv, python3-pip, python3-setuptools, python3-wheel).
set -uo pipefail
mode=$1
tmp=$(mktemp -d /tmp/khala-pycheck-XXXXXX)
khalad_pid=
name=kpychk$$
cleanup() {
    if [[ -n $khalad_pid ]]; then
        kill "$khalad_pid" 2>/dev/null
        wait "$khalad_pid" 2>/dev/null
    fi
    rm -f /dev/shm/khala."$name".*
    rm -rf "$tmp"
}
trap cleanup EXIT
err() {
    echo "check_python: $*" >&2
    exit 1
}

# start_khalad KHALAD: a private khalad on $tmp/khalad.sock; up to 10 s for it to listen.
start_khalad() {
    "$1" --foreground --name "$name" --set "cache.socket=$tmp/khalad.sock" \
        --set "l2.path=$tmp/l2" --set l1.max_memory_mb=16 2>"$tmp/khalad.log" &
    khalad_pid=$!
    local i
    for i in $(seq 100); do
        [[ -S $tmp/khalad.sock ]] && return 0
        if ! kill -0 "$khalad_pid" 2>/dev/null; then
            cat "$tmp/khalad.log" >&2
            err "khalad exited at start"
        fi
        sleep 0.1
    done
    err "khalad did not listen on $tmp/khalad.sock within 10 s"
}

# smoke PYTHON WHERE [env...]: from $tmp (neither the source nor the build tree), import
# khala_cache, check it comes from WHERE, put through khalad, read back from L1.
smoke() {
    local python=$1 where=$2
    shift 2
    (cd "$tmp" && env -u PYTHONPATH -u KHALA_CACHE_NAME -u KHALA_SOCKET "$@" "$python" - \
        "$where" "$name" "$tmp/khalad.sock" <<'PY'
import os, sys
where, name, sock = sys.argv[1:]
import khala_cache
from khala_cache import _khala
for mod in (khala_cache, _khala):
    assert os.path.realpath(mod.__file__).startswith(os.path.realpath(where) + os.sep), \
        f"{mod.__name__} comes from {mod.__file__}, not from {where}"
with _khala.Cache(name, socket=sock) as c:
    version = c.put(b"installed", b"works")
    e = c.get(b"installed", with_meta=True)
    assert (e.value, e.level, e.version) == (b"works", _khala.LEVEL_L1, version), e
print(f"check_python: {khala_cache.__file__}: put and L1 get work")
PY
    ) || err "the installed package from $where does not work (above)"
}

# ldd_clean SO BUILD_DIR: every library resolves, and none from the build tree.
ldd_clean() {
    local out
    out=$(ldd "$1") || err "ldd $1 failed"
    ! grep -q "not found" <<<"$out" || err "$1 needs a library that is not found:"$'\n'"$out"
    if [[ -n ${2:-} ]] && grep -qF "$(realpath "$2")" <<<"$out"; then
        err "$1 loads a library from the build tree $2:"$'\n'"$out"
    fi
}

case $mode in
install)
    cmake=$2 build=$3 python=$4 khalad=$5
    src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    syspath=$(cd "$tmp" && env -u PYTHONPATH "$python" -c 'import sys; print("\n".join(sys.path))')
    start_khalad "$khalad"
    for prefix in /usr/local /usr; do
        root=$tmp/destdir-${prefix##*/}
        if ! DESTDIR=$root "$cmake" --install "$build" --prefix "$prefix" --component python \
            >"$tmp/install.log" 2>&1; then
            cat "$tmp/install.log" >&2
            err "DESTDIR=$root cmake --install $build --prefix $prefix --component python failed"
        fi
        init=$(cd "$root" && find . -path '*/khala_cache/__init__.py' | head -n 1)
        [[ -n $init ]] || err "prefix $prefix: no khala_cache/__init__.py under $root"
        sitedir=${init#.}
        sitedir=${sitedir%/khala_cache/__init__.py}
        grep -qxF "$sitedir" <<<"$syspath" ||
            err "prefix $prefix: installed into $sitedir, not on $python's sys.path:"$'\n'"$syspath"
        for f in "$src"/bindings/python/khala_cache/*.py; do
            [[ -f $root$sitedir/khala_cache/$(basename "$f") ]] ||
                err "prefix $prefix: $(basename "$f") is not installed"
        done
        so=$(ls "$root$sitedir"/khala_cache/_khala*.so 2>/dev/null | head -n 1)
        [[ -n $so ]] || err "prefix $prefix: no _khala*.so in $root$sitedir/khala_cache"
        ldd_clean "$so" "$build"
        echo "check_python: prefix $prefix installs into $sitedir"
        smoke "$python" "$root$sitedir" PYTHONPATH="$root$sitedir"
    done
    ;;
pip)
    src=$2 python=$3 khalad=$4
    for m in venv pip setuptools wheel; do
        if ! "$python" -c "import $m" 2>/dev/null; then
            echo "check_python: SKIPPED: $python has no module $m (scripts/deps.sh installs it)"
            exit 77
        fi
    done
    # A copy of what setup.py reads, laid out as in the repository, so that the build (which
    # pip runs in place) leaves nothing in the source tree.
    mkdir -p "$tmp/src/bindings"
    cp -r "$src/CMakeLists.txt" "$src/include" "$src/lib" "$tmp/src/" || err "cannot copy $src"
    cp -r "$src/bindings/python" "$tmp/src/bindings/" || err "cannot copy $src/bindings/python"
    rm -rf "$tmp/src/bindings/python/build" "$tmp/src/bindings/python/"*.egg-info
    "$python" -m venv --system-site-packages "$tmp/venv" || err "$python -m venv failed"
    if ! "$tmp/venv/bin/pip" install -q --no-build-isolation --no-index \
        "$tmp/src/bindings/python" >"$tmp/pip.log" 2>&1; then
        cat "$tmp/pip.log" >&2
        err "pip install --no-build-isolation bindings/python failed"
    fi
    site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
    so=$(ls "$site"/khala_cache/_khala*.so 2>/dev/null | head -n 1)
    [[ -n $so ]] || err "pip installed no _khala*.so into $site/khala_cache"
    ldd_clean "$so" ""
    start_khalad "$khalad"
    smoke "$tmp/venv/bin/python" "$site"
    ;;
*)
    err "unknown mode '$mode' (install or pip)"
    ;;
esac
echo "check_python: $mode: the installed package works"

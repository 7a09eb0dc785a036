#!/usr/bin/env bash
# Install the Debian 12 packages khala-cache needs to build, test and demo, if any are missing.
# Idempotent and quiet when everything is present; runs `apt-get update` only when something
# must be installed. Works as root, or through sudo when that is available.
set -euo pipefail

# What each package is for. The ones marked "later" serve coming issues (khalad, L2/L3, wire
# format); they are cheap, so a machine set up today is ready for them.
PACKAGES=(
    build-essential      # gcc, make, libc headers
    cmake                # 3.25 on Debian 12
    pkg-config           # finds xxhash and criterion; checks the installed khalacache.pc
    clang                # fuzz targets (KHALA_FUZZ) and clang-tidy runs
    clang-format         # the format check in scripts/test.sh
    libclang-rt-14-dev   # clang's sanitizer and libFuzzer runtimes
    libcriterion-dev     # the test framework
    libxxhash-dev        # the key hash (header-only use)
    liblmdb-dev          # khala-bench's LMDB reference
    liburcu-dev          # later: khalad's queues and hash table
    libmsgpack-dev       # the socket protocol's frames (msgpack-c)
    python3-msgpack      # khala_cache.MsgpackCodec (optional at run time) and its tests
    libinih-dev          # khalad's config file (INI)
    libsystemd-dev       # khalad's sd_notify readiness and watchdog
    uthash-dev           # khalad's in-process hash tables (single-flight)
    libsodium-dev        # encryption at rest of sensitive types (daemon/crypt.c)
    libhiredis-dev       # later: the Redis L2 driver and pub/sub
    libcurl4-openssl-dev # the SurrealDB L3 driver's HTTP (daemon/http_pool.c)
    libjansson-dev       # the SurrealDB L3 driver's JSON (/rpc requests and replies)
    redis-server         # later: integration tests against a real Redis
    systemd              # systemd.pc (where the unit and sysusers.d file go), systemd-analyze
                         # verify and systemd-sysusers (tests/check_install.sh)
    groff-base           # renders the man pages (man/, tests/check_man.sh)
    man-db               # man -l --warnings (tests/check_man.sh)
    gcovr                # scripts/coverage.sh: line and branch coverage, HTML report
    # The Python binding (issue 11, bindings/python). Debian's interpreter /usr/bin/python3 (3.11)
    # and Debian's packages only, nothing from PyPI.
    python3-dev          # Python.h and python3.pc: CMake's FindPython3 Development, setup.py
    python3-pytest       # runs bindings/python/tests (ctest `python`)
    python3-msgpack      # khala_cache.MsgpackCodec (optional at run time, tested when present)
    python3-redis        # redis-py: the reference of bench/python/bench_python.py
    python3-setuptools   # setup.py: pip install --no-build-isolation bindings/python
    python3-wheel        # setuptools' bdist_wheel, which pip needs for that install
    python3-pip          # pip itself (tests/check_python.sh pip)
    python3-venv         # the venv that pip installs into (Debian's pip refuses system installs)
    python3-numpy        # the view tests: a numpy array over an L1 view (zero copy, lifetime)
    curl                 # tests/check_surreal_front.sh talks HTTP to the SurrealDB front
)

install_debian() {
    missing=()
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [[ "$status" != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done

    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi

    if [[ $(id -u) -eq 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "deps.sh: missing packages (${missing[*]}) and not root, and sudo is not available" >&2
        exit 1
    fi

    echo "deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
install_debian

# The SurrealDB the tests talk to (issue 12, docs/testing.md "SurrealDB"): the real engine from
# npm (@surrealdb/node, which embeds SurrealDB) behind tests/support/surreal/front.mjs. Node 18
# or newer; Debian's nodejs and npm when there is no node at all (a machine that has Node from
# elsewhere, with its npm, keeps it). Then `npm ci` from the committed lockfile, when
# node_modules is missing or older than the lockfile.
if ! command -v node >/dev/null 2>&1; then
    PACKAGES=(nodejs npm) # Debian 12: Node 18 (the front's minimum) and its npm
    install_debian
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 18)); then
    echo "deps.sh: node $(node --version) is too old for the SurrealDB front (Node >= 18)" >&2
    exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "deps.sh: node is installed but npm is not (install npm with this node)" >&2
    exit 1
fi
front=$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/support/surreal" && pwd)
if [[ ! -f $front/node_modules/.package-lock.json ||
    $front/package-lock.json -nt $front/node_modules/.package-lock.json ]]; then
    echo "deps.sh: npm ci in $front (the SurrealDB engine for the tests)"
    (cd "$front" && npm ci --no-audit --no-fund --loglevel=error)
fi

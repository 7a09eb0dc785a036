"""Build khala_cache._khala with setuptools (pip install --no-build-isolation bindings/python).

The extension is compiled together with the reader side of lib/ (the sources of the static
libkhalacache and the KHALA_CORE_SOURCES of the top CMakeLists.txt, read from there so that the
two builds cannot drift apart), so that the installed module carries libkhalacache inside it
and needs no shared library at run time. It links msgpack-c and xxhash (Debian:
libmsgpack-dev, libxxhash-dev) as pkg-config names them. include/khala/version.h is generated
here from version.h.in, as CMake does, with the project version of CMakeLists.txt.

The build needs the repository around this directory (pip builds in place): an sdist of
bindings/python alone cannot build.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOP_CMAKE = os.path.join(ROOT, "CMakeLists.txt")


def fail(message: str) -> None:
    """Stop the build with a message naming what is missing."""
    sys.exit(f"khala-cache setup.py: {message}")


def read_top_cmake() -> str:
    """The top CMakeLists.txt of the repository, or a clear failure when it is not there."""
    try:
        with open(TOP_CMAKE, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        fail(f"cannot read {TOP_CMAKE} ({e.strerror}): build from the khala-cache repository")
    raise AssertionError  # not reached


def project_version(cmake: str) -> str:
    """The project version of `project(khala VERSION x.y.z ...)`."""
    m = re.search(r"project\(\s*khala\s+VERSION\s+(\d+)\.(\d+)\.(\d+)", cmake)
    if not m:
        fail(f"no `project(khala VERSION x.y.z)` in {TOP_CMAKE}")
    return ".".join(m.groups())


def library_sources(cmake: str) -> list[str]:
    """The sources of libkhalacache: those of `add_library(khalacache_static STATIC ...)` plus
    the KHALA_CORE_SOURCES whose objects it takes."""
    m = re.search(r"set\(\s*KHALA_CORE_SOURCES\s+([^)]*)\)", cmake)
    if not m:
        fail(f"no set(KHALA_CORE_SOURCES ...) in {TOP_CMAKE}")
    core = m.group(1).split()
    m = re.search(r"add_library\(\s*khalacache_static\s+STATIC\s+([^$)]*)"
                  r"\$<TARGET_OBJECTS:khala_core>", cmake)
    if not m:
        fail(f"no add_library(khalacache_static STATIC ... $<TARGET_OBJECTS:khala_core>) in "
             f"{TOP_CMAKE}")
    return [os.path.join(ROOT, n) for n in m.group(1).split() + core]


def pkg_config(*args: str) -> list[str]:
    """The words pkg-config prints for args, or a failure naming the Debian package."""
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        fail(f"pkg-config {' '.join(args)} failed ({e}); scripts/deps.sh installs "
             "pkg-config, libmsgpack-dev and libxxhash-dev")
    return shlex.split(out.stdout)


def write_version_h(version: str, out_dir: str) -> None:
    """Generate include/khala/version.h from version.h.in into out_dir (CMake's configure_file)."""
    major, minor, patch = version.split(".")
    with open(os.path.join(ROOT, "include", "khala", "version.h.in"), encoding="utf-8") as f:
        text = f.read()
    for name, value in (("PROJECT_VERSION_MAJOR", major), ("PROJECT_VERSION_MINOR", minor),
                        ("PROJECT_VERSION_PATCH", patch), ("PROJECT_VERSION", version)):
        text = text.replace(f"@{name}@", value)
    path = os.path.join(out_dir, "khala", "version.h")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    if old != text:  # keep the file's time when nothing changed
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


class BuildExt(build_ext):
    """build_ext that first generates version.h under the build's temporary directory."""

    def run(self) -> None:
        gen = os.path.join(os.path.abspath(self.build_temp), "khala-generated")
        write_version_h(VERSION, gen)
        for ext in self.extensions:
            ext.include_dirs.insert(0, gen)
            # Added here, not in setup(): setuptools refuses absolute paths among the sources it
            # lists in the egg-info, and a relative ../../lib/x.c would put its object file
            # outside the build directory (into lib/).
            ext.sources += [s for s in LIB_SOURCES if s not in ext.sources]
        super().run()


CMAKE = read_top_cmake()
VERSION = project_version(CMAKE)
EXT_SOURCES = sorted(os.path.relpath(p, HERE)
                     for p in glob.glob(os.path.join(HERE, "src", "*.c")))
LIB_SOURCES = library_sources(CMAKE)
if not EXT_SOURCES:
    fail(f"no extension sources in {os.path.join(HERE, 'src')}")

flags = pkg_config("--cflags", "libxxhash", "msgpack")
libs = pkg_config("--libs", "libxxhash", "msgpack")

khala_ext = Extension(
    "khala_cache._khala",
    sources=EXT_SOURCES,
    include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "lib"), "src"],
    define_macros=[("_GNU_SOURCE", None)],
    # As CMake builds the library: C11, hidden symbols (only PyInit__khala is exported).
    extra_compile_args=["-std=c11", "-fvisibility=hidden", *flags],
    extra_link_args=[*libs, "-lrt", "-pthread"],
)

setup(
    version=VERSION,
    ext_modules=[khala_ext],
    cmdclass={"build_ext": BuildExt},
)

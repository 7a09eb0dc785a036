"""Fixtures of the Python binding's tests.

`khalad` (function scope) starts a private khalad: its own cache name, socket and directory
(disk L2 under it), so that tests never meet each other, another engineer's run or a system
khalad. Binaries come from the environment that ctest sets: KHALAD_PATH (and KHALACTL_PATH);
the package from PYTHONPATH=<build>/python.

Others may add fixtures at the end of this file, each part in its own marked section.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import signal
import socket as socketmod
import subprocess
import tempfile
import time
from typing import Iterator, List, Optional

import pytest

from khala_cache import _khala

KHALAD_PATH = os.environ.get("KHALAD_PATH", "")
KHALACTL_PATH = os.environ.get("KHALACTL_PATH", "")

# Bound on a start (until the socket accepts) and on a graceful stop, in seconds.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0

_counter = itertools.count()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, so that a killed pytest
    never leaves a khalad behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _connectable(path: str) -> bool:
    s = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Khalad:
    """A private khalad for one test.

    Attributes: name (the cache name), socket (its socket path), dir (its directory: L2 and
    the socket live there), pid (while running, else None), sets (extra "section.key=value"
    overrides for the next start; kept across restarts).
    """

    def __init__(self, binary: str, name: str, directory: str) -> None:
        self.binary = binary
        self.name = name
        self.dir = directory
        self.socket = os.path.join(directory, "khalad.sock")
        self.pid: Optional[int] = None
        self.sets: List[str] = []
        self._proc: Optional[subprocess.Popen] = None

    def _argv(self) -> List[str]:
        base = [
            f"cache.socket={self.socket}",
            "cache.socket_mode=0660",
            "l1.max_memory_mb=16",
            "policies.single_flight_timeout_ms=3000",
            f"l2.path={self.dir}/l2",
        ]
        argv = [self.binary, "--foreground", "--name", self.name]
        for s in base + self.sets:
            argv += ["--set", s]
        return argv

    def start(self) -> None:
        """Start khalad (again, with the same name, socket and directories) and wait until its
        socket accepts connections."""
        if self._proc is not None:
            raise RuntimeError(f"khalad {self.name} is running already (pid {self.pid})")
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass
        verbose = bool(os.environ.get("KHALA_TEST_VERBOSE"))
        self._proc = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if verbose else subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.pid = self._proc.pid
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if _connectable(self.socket):
                return
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                self.pid = None
                raise RuntimeError(
                    f"khalad {self.name} exited at start with {rc} "
                    "(KHALA_TEST_VERBOSE=1 shows its stderr)")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"khalad {self.name} did not listen on {self.socket} "
                           f"within {START_TIMEOUT_S} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send sig (SIGTERM by default) and wait for khalad to exit; SIGKILL after
        STOP_TIMEOUT_S. A signal that does not end it (SIGSTOP, SIGCONT) is only sent."""
        if self._proc is None:
            return
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            os.kill(self._proc.pid, sig)
            return
        self._proc.send_signal(sig)
        try:
            self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        self.pid = None

    def kill(self) -> None:
        """SIGKILL khalad (after a SIGCONT, in case it was stopped) and reap it."""
        if self._proc is None:
            return
        try:
            os.kill(self._proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self._proc.kill()
        self._proc.wait()
        self._proc = None
        self.pid = None

    def open(self, **kw) -> _khala.Cache:
        """A Cache on this khalad: _khala.Cache(name, socket=..., **kw)."""
        kw.setdefault("socket", self.socket)
        return _khala.Cache(self.name, **kw)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """Run khalactl against this khalad; returns the completed process (text output)."""
        if not KHALACTL_PATH:
            pytest.skip("KHALACTL_PATH is not set")
        return subprocess.run([KHALACTL_PATH, "--name", self.name, "--socket", self.socket,
                               *args], capture_output=True, text=True, timeout=30)

    def clean(self) -> None:
        """Remove the segment's files and the directory."""
        for suffix in ("data", "readers", "lock"):
            try:
                os.unlink(f"/dev/shm/khala.{self.name}.{suffix}")
            except FileNotFoundError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def new_khalad() -> Khalad:
    """A Khalad (not started) with a fresh name and directory."""
    if not KHALAD_PATH or not os.access(KHALAD_PATH, os.X_OK):
        pytest.skip("KHALAD_PATH does not name the khalad binary (ctest sets it)")
    directory = tempfile.mkdtemp(prefix="khpy-", dir="/tmp")
    os.chmod(directory, 0o700)
    name = f"pyt{os.getpid()}x{next(_counter)}"
    return Khalad(KHALAD_PATH, name, directory)


@pytest.fixture
def khalad(monkeypatch) -> Iterator[Khalad]:
    """A private khalad, started; KHALA_CACHE_NAME and KHALA_SOCKET name it for the test."""
    k = new_khalad()
    try:
        k.start()
        monkeypatch.setenv("KHALA_CACHE_NAME", k.name)
        monkeypatch.setenv("KHALA_SOCKET", k.socket)
        yield k
    finally:
        k.kill()
        k.clean()


@pytest.fixture
def cache(khalad) -> Iterator[_khala.Cache]:
    """A Cache on the test's khalad, closed after the test."""
    c = khalad.open()
    yield c
    try:
        c.close()
    except BufferError:
        pass

"""Exceptions: classes, codes, names and messages; a khalad that is down or stopped."""
from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest

from khala_cache import _khala

ERROR_H = Path(__file__).resolve().parents[3] / "include" / "khala" / "error.h"

CLASSES = {
    "ENOTFOUND": "NotFound", "ETOOBIG": "ValueTooBig", "EVERSION": "VersionConflict",
    "EDAEMON": "DaemonUnavailable", "ELAYOUT": "LayoutMismatch", "EKEY": "InvalidKey",
    "ECORRUPT": "Corrupt", "ENOREADER": "NoReaderSlot", "EFULL": "CacheFull",
    "EBLOCKED": "ReclaimBlocked", "ESECTION": "SectionMisuse", "ECONFIG": "ConfigError",
    "ENAME": "InvalidName", "EEXIST": "AlreadyOwned", "EPROTO": "ProtocolError",
    "ETIER": "TierUnavailable", "EQUEUE": "QueueFull", "EDENIED": "PermissionDenied",
    "ELIMIT": "LimitReached", "EINVAL": "InvalidArgument", "EAUTH": "AuthenticationFailed",
    "EREFUSED": "Refused",
}


def error_h_codes():
    """(name, code) of every khala code in error.h's X-macro list."""
    text = ERROR_H.read_text()
    return [(m[1], -1000 - int(m[2])) for m in re.finditer(r"X\((E[A-Z]+), (\d+),", text)]


def test_every_code_of_error_h_has_its_class():
    codes = error_h_codes()
    assert len(codes) == len(CLASSES)
    for name, code in codes:
        cls = getattr(_khala, CLASSES[name])
        assert cls.code == code and cls.name == "KHALA_" + name
        e = _khala.error_for(code, "detail")
        assert type(e) is cls and isinstance(e, _khala.KhalaError)
        assert (e.code, e.name, e.message, str(e)) == (code, "KHALA_" + name, "detail", "detail")


def test_builtin_bases():
    assert issubclass(_khala.InvalidKey, ValueError)
    assert issubclass(_khala.InvalidName, ValueError)
    assert issubclass(_khala.InvalidArgument, ValueError)
    assert issubclass(_khala.DaemonUnavailable, ConnectionError)
    assert issubclass(_khala.PermissionDenied, PermissionError)
    assert issubclass(_khala.Timeout, TimeoutError)
    e = _khala.error_for(-110)
    assert type(e) is _khala.Timeout and e.name == "ETIMEDOUT" and e.code == -110


def test_other_errno_is_a_plain_khala_error():
    e = _khala.error_for(-12, "out of memory")
    assert type(e) is _khala.KhalaError and e.code == -12 and e.name == "ENOMEM"


@pytest.mark.parametrize("key", [b"", b"x" * 251, "é" * 126])
def test_bad_keys_raise_invalid_key(cache, key):
    for call in (lambda: cache.get(key), lambda: cache.get_l1(key), lambda: cache.delete(key),
                 lambda: cache.put(key, b"v"), lambda: cache.view(key),
                 lambda: cache.get_or_load(key, lambda k: b"")):
        with pytest.raises(_khala.InvalidKey) as ei:
            call()
        assert ei.value.code == _khala.InvalidKey.code
        assert "key is" in ei.value.message


def test_key_of_250_bytes_is_fine(cache):
    cache.put(b"k" * 250, b"v")
    assert cache.get(b"k" * 250) == b"v"


def test_keys_of_other_types_raise_type_error(cache):
    for key in (1, None, 1.5, object()):
        with pytest.raises(TypeError):
            cache.get(key)


def test_compare_and_set(cache):
    v1 = cache.put(b"cas", b"1", expected_version=0)  # must not exist: fine
    with pytest.raises(_khala.VersionConflict) as ei:
        cache.put(b"cas", b"x", expected_version=0)
    assert ei.value.code == -1002 and ei.value.name == "KHALA_EVERSION"
    assert ei.value.message
    v2 = cache.put(b"cas", b"2", expected_version=v1)
    assert v2 > v1
    with pytest.raises(_khala.VersionConflict):
        cache.put(b"cas", b"3", expected_version=v1)
    assert cache.get(b"cas") == b"2"


def test_value_too_big(cache):
    with pytest.raises(_khala.ValueTooBig) as ei:
        cache.put(b"big", b"x" * (1024 * 1024 + 1))
    assert ei.value.code == -1001
    assert "1048577" in ei.value.message  # the library's message names the size


def test_khalad_down_l1_still_answers_and_writes_raise(khalad):
    c = khalad.open()
    c.put(b"kept", b"in L1")
    khalad.stop()
    assert c.get(b"kept") == b"in L1"
    assert c.get_l1(b"kept") == b"in L1"
    assert c.get(b"missing", b"dflt") == b"dflt"  # a miss, not an exception
    with pytest.raises(_khala.DaemonUnavailable) as ei:
        c.put(b"k", b"v")
    assert isinstance(ei.value, ConnectionError)
    assert ei.value.code == -1003 and khalad.socket in ei.value.message
    with pytest.raises(_khala.DaemonUnavailable):
        c.delete(b"kept")
    # get_or_load loads directly, caching nothing.
    assert c.get_or_load(b"x", lambda k: b"direct", with_meta=True).level == _khala.LEVEL_LOADER
    khalad.start()
    # The library reconnects on its own, once KHALA_RECONNECT_INTERVAL_MS (100 ms) has passed
    # since the failed attempt.
    for _ in range(200):
        try:
            c.put(b"k", b"back")
            break
        except _khala.DaemonUnavailable:
            time.sleep(0.02)
    assert c.get(b"k") == b"back"


def test_miss_releases_the_gil_while_khalad_is_stopped(khalad):
    """A get waiting on a SIGSTOPped khalad lets another Python thread run."""
    c = khalad.open(timeout_ms=2000)
    c.put(b"warm", b"connects this thread")  # the main thread's connection is up
    khalad.stop(signal.SIGSTOP)
    try:
        done = threading.Event()
        progress = 0
        result = []

        def getter():
            result.append(c.get(b"absent", b"default"))
            done.set()

        t = threading.Thread(target=getter)
        t.start()
        while not done.is_set():
            progress += 1  # runs only while the getter does not hold the GIL
            done.wait(0.001)
        t.join()
        assert result == [b"default"]  # the timeout made it a miss
        assert progress > 10
    finally:
        khalad.stop(signal.SIGCONT)


def test_put_timeout_raises_timeout(khalad):
    c = khalad.open(timeout_ms=300)
    c.put(b"a", b"1")
    khalad.stop(signal.SIGSTOP)
    try:
        with pytest.raises(_khala.Timeout) as ei:
            c.put(b"b", b"2")
        assert isinstance(ei.value, TimeoutError) and ei.value.code == -110
    finally:
        khalad.stop(signal.SIGCONT)

"""default_cache() and default_async_cache(): one per process, following the environment."""

import os

from khala_cache import default_async_cache, default_cache


def test_one_shared_cache_for_the_environment(khalad):
    c = default_cache()
    assert c is default_cache()
    assert (c.name, c.socket) == (khalad.name, khalad.socket)
    assert default_async_cache() is default_async_cache()
    assert default_async_cache().cache is c
    c.put("d", b"1")
    assert default_cache().get_l1("d") == b"1"


def test_a_closed_or_changed_default_is_opened_again(khalad, monkeypatch):
    c = default_cache()
    c.close()
    again = default_cache()
    assert again is not c and not again.closed
    monkeypatch.setenv("KHALA_SOCKET", khalad.socket + ".other")
    other = default_cache()
    assert other is not again and other.socket == khalad.socket + ".other"
    monkeypatch.setenv("KHALA_SOCKET", khalad.socket)
    assert default_cache().socket == khalad.socket


def test_a_fork_child_opens_its_own(khalad):
    parent = default_cache()
    parent_async = default_async_cache()
    parent.put("from-parent", b"p")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            mine = default_cache()
            ok = (
                mine is not parent
                and default_async_cache() is not parent_async
                and mine.get_l1("from-parent") == b"p"
                and mine.put("from-child", b"c") > 0
            )
            code = 0 if ok else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    status = os.read(r, 1)
    os.close(r)
    _, wstatus = os.waitpid(pid, 0)
    assert status == b"\x00" and os.waitstatus_to_exitcode(wstatus) == 0
    assert parent.get("from-child") == b"c"

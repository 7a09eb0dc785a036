"""A worker that runs as another user than khalad (issue 11, with the socket-group handling of
issue 10): khalad runs as root with `[cache] socket_group` set and its socket 0660; a worker
process that drops to another uid

  - in that group: attaches to L1, writes through khalad, reads its write back from L1;
  - outside it: is refused (PermissionDenied, a PermissionError, code -EACCES) with a message that names the segment's
    file and khalad's socket_group, and no Cache is made.

Needs root (to make the user and group and to drop to them); skipped otherwise. The group is
`khala-test` (the C deployment tests' group, tests/integration/test_deploy.c), created with
groupadd when absent; the user `khala-pytest`, created with useradd when absent. When those
tools cannot run, uid 65534 and gid 54321 stand in (no name needed). The worker is a child
made with os.fork that calls os.setgroups, os.setgid and os.setuid, then uses khala_cache as
any worker would.
"""

from __future__ import annotations

import ast
import errno
import grp
import os
import pwd
import stat
import subprocess

import pytest

import mp_workers
from khala_cache import _khala

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: makes a user and a group, starts khalad as root and runs the worker "
    "as that user (the C tests' deploy suite does the same)")

GROUP = "khala-test"
USER = "khala-pytest"
FALLBACK_GID = 54321
FALLBACK_UID = 65534
NOGROUP_GID = 65534


def find_or_make_group() -> tuple[str, int]:
    """The socket group: (name usable in socket_group, gid)."""
    try:
        return GROUP, grp.getgrnam(GROUP).gr_gid
    except KeyError:
        pass
    if subprocess.run(["groupadd", "-f", "-r", GROUP], capture_output=True).returncode == 0:
        return GROUP, grp.getgrnam(GROUP).gr_gid
    return str(FALLBACK_GID), FALLBACK_GID


def find_or_make_user() -> int:
    """The worker's uid: a system user whose primary group is not the socket group (so that
    membership comes from the supplementary list the worker sets, as for a real deployment
    that adds a service user to the group)."""
    try:
        return pwd.getpwnam(USER).pw_uid
    except KeyError:
        pass
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "--gid", str(NOGROUP_GID), USER],
                       capture_output=True)
    if r.returncode == 0:
        return pwd.getpwnam(USER).pw_uid
    return FALLBACK_UID


@pytest.fixture
def reachable(khalad):
    """Let any user traverse the directories down to khalad's socket for the test (pytest's
    own base directory is 0700), as a deployment's /run/khala is; restored afterwards."""
    changed = []
    path = os.path.abspath(khalad.dir)
    while path != "/":
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o001 == 0:
            os.chmod(path, mode | 0o011)
            changed.append((path, mode))
        path = os.path.dirname(path)
    yield
    for path, mode in changed:
        os.chmod(path, mode)


@pytest.fixture
def grouped_khalad(khalad, reachable):
    """The fixture's khalad, restarted with its socket 0660 in the test group; (khalad, gid)."""
    group, gid = find_or_make_group()
    khalad.stop()
    khalad.sets += ["cache.socket_mode=0660", f"cache.socket_group={group}"]
    khalad.start()
    return khalad, gid


def as_user(uid: int, groups: list[int], primary: int, fn, *args):
    """In the forked child: drop to uid with the given groups, then run fn(*args)."""

    def body():
        os.setgroups(groups)
        os.setgid(primary)
        os.setuid(uid)
        assert os.getuid() == uid and os.geteuid() == uid
        return fn(*args)

    return mp_workers.run_forked(body)


def member_work(name: str, socket: str) -> tuple:
    """A worker in the socket group: put through khalad, read it back with its metadata."""
    with _khala.Cache(name, socket=socket) as c:
        version = c.put(b"user:other", b"written by another uid")
        e = c.get(b"user:other", with_meta=True)
        root_e = c.get(b"user:root", with_meta=True)
        return (version, e.value, e.level, root_e.value if root_e else None,
                root_e.level if root_e else None)


def outsider_work(name: str, socket: str) -> str:
    """A worker outside the socket group: opening must fail with the library's -EACCES, raised
    as PermissionDenied (a KhalaError and a PermissionError) whose .code stays -EACCES."""
    try:
        _khala.Cache(name, socket=socket)
    except PermissionError as e:
        assert isinstance(e, _khala.PermissionDenied)
        return f"refused: {e.code == -errno.EACCES} {e.name}: {e.message}"
    return "opened"


def test_a_worker_in_the_socket_group_reads_l1_and_writes_through_khalad(grouped_khalad):
    k, gid = grouped_khalad
    with k.open() as c:
        c.put(b"user:root", b"written by root")
    uid = find_or_make_user()
    assert uid != 0
    code, out = as_user(uid, [gid], NOGROUP_GID, member_work, k.name, k.socket)
    assert code == 0, out
    version, value, level, root_value, root_level = ast.literal_eval(out)
    assert (value, level) == (b"written by another uid", _khala.LEVEL_L1)
    assert (root_value, root_level) == (b"written by root", _khala.LEVEL_L1)
    # khalad wrote it: root sees it, same version, from L1.
    with k.open() as c:
        e = c.get(b"user:other", with_meta=True)
        assert (e.value, e.level, e.version) == (b"written by another uid", _khala.LEVEL_L1,
                                                 version)


def test_a_worker_outside_the_socket_group_is_refused_with_eacces(grouped_khalad):
    k, gid = grouped_khalad
    uid = find_or_make_user()
    code, out = as_user(uid, [NOGROUP_GID], NOGROUP_GID, outsider_work, k.name, k.socket)
    assert code == 0, out
    out = ast.literal_eval(out)  # the repr of the str outsider_work returned
    assert out.startswith("refused: True "), out
    # The message names the file and says what to do about it: be in khalad's socket_group.
    assert "/dev/shm/khala." in out and "socket_group" in out, out

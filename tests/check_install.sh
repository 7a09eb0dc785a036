#!/usr/bin/env bash
# What `cmake --install` leaves for `systemctl enable --now khalad` (docs/operating.md, "Under
# systemd"), checked without a running systemd (a container has none):
#   check_install.sh tree   CMAKE BUILD_DIR  the installed tree: a staging prefix keeps every
#       file under it, with the unit's ExecStart= naming the khalad installed there; a
#       system-wide prefix (/usr, into a DESTDIR) puts the unit where systemd's pkg-config says,
#       the sysusers.d file where systemd-sysusers reads it (which makes the khala user from
#       it), /etc/khala/khalad.conf (kept when it exists), which khalad --check accepts
#   check_install.sh verify CMAKE BUILD_DIR  systemd-analyze verify on the installed unit, with
#       no warning; exit 77 (CTest: skipped) when systemd-analyze cannot run here at all
set -uo pipefail
mode=$1 cmake=$2 build=$3
tmp=$(mktemp -d /tmp/khala-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
err() {
    echo "check_install: $*" >&2
    fail=1
}
# A value of key in the [Service] of unit file $1 (the first one).
unit_key() { sed -n "s/^$2=//p" "$1" | head -n 1; }

stage=$tmp/stage
if ! "$cmake" --install "$build" --prefix "$stage" >"$tmp/install.log" 2>&1; then
    cat "$tmp/install.log" >&2
    err "cmake --install --prefix $stage failed"
    exit 1
fi
unit=$stage/lib/systemd/system/khalad.service
[[ -f $unit ]] || { err "no unit at $unit"; exit 1; }

if [[ $mode == verify ]]; then
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "check_install: SKIPPED: systemd-analyze is not installed (scripts/deps.sh installs systemd)"
        exit 77
    fi
    # Can it verify at all here? A unit that cannot be wrong tells.
    printf '[Service]\nType=oneshot\nExecStart=/bin/true\n' >"$tmp/probe.service"
    if ! out=$(systemd-analyze verify --man=no "$tmp/probe.service" 2>&1); then
        echo "check_install: SKIPPED: systemd-analyze verify cannot run here: $out"
        exit 77
    fi
    out=$(systemd-analyze verify --man=no "$unit" 2>&1)
    rc=$?
    if [[ $rc -ne 0 || -n $out ]]; then
        err "systemd-analyze verify $unit (exit $rc):"$'\n'"$out"
    else
        echo "check_install: systemd-analyze verify: $unit is clean"
    fi
    exit $fail
fi

# 1. The staging prefix: everything under it; the unit runs the khalad installed with it.
exec_start=$(unit_key "$unit" ExecStart)
[[ $exec_start == "$stage/bin/khalad --foreground --config $stage/etc/khala/khalad.conf" ]] ||
    err "ExecStart is '$exec_start'"
[[ -x $stage/bin/khalad ]] || err "no executable $stage/bin/khalad"
[[ -x $stage/bin/khalactl ]] || err "no executable $stage/bin/khalactl"
for key in User Group; do
    [[ $(unit_key "$unit" $key) == khala ]] || err "$key= is '$(unit_key "$unit" $key)', want khala"
done
[[ $(unit_key "$unit" RuntimeDirectory) == khala ]] || err "RuntimeDirectory= is not khala"
[[ $(unit_key "$unit" StateDirectory) == khala ]] || err "StateDirectory= is not khala"
[[ $(unit_key "$unit" Type) == notify ]] || err "Type= is not notify"
[[ -f $stage/lib/sysusers.d/khala.conf ]] || err "no $stage/lib/sysusers.d/khala.conf"
for f in etc/khala/khalad.conf etc/khala/khalad.conf.example share/man/man8/khalad.8 \
    share/man/man1/khalactl.1 share/man/man5/khalad.conf.5; do
    [[ -f $stage/$f ]] || err "no $stage/$f"
done
# Nothing of it under the library directory any more.
found=$(find "$stage" -path '*/lib/*/systemd/*' -o -path '*/lib64/systemd/*')
[[ -z $found ]] || err "systemd files under the library directory: $found"

# 2. System-wide (/usr), into a DESTDIR: the directories systemd reads.
root=$tmp/root
if ! DESTDIR=$root "$cmake" --install "$build" --prefix /usr >"$tmp/install2.log" 2>&1; then
    cat "$tmp/install2.log" >&2
    err "DESTDIR=$root cmake --install --prefix /usr failed"
    exit 1
fi
unitdir=lib/systemd/system sysusersdir=lib/sysusers.d
if pkg-config --exists systemd 2>/dev/null; then
    unitdir=$(pkg-config --define-variable=prefix=/usr --define-variable=root_prefix=/usr \
        --define-variable=rootprefix=/usr --variable=systemdsystemunitdir systemd)
    sysusersdir=$(pkg-config --define-variable=prefix=/usr --variable=sysusersdir systemd)
    unitdir=${unitdir#/usr/} sysusersdir=${sysusersdir#/usr/}
fi
unit=$root/usr/$unitdir/khalad.service
[[ -f $unit ]] || err "no unit at $unit"
exec_start=$(unit_key "$unit" ExecStart)
[[ $exec_start == "/usr/bin/khalad --foreground --config /etc/khala/khalad.conf" ]] ||
    err "system-wide ExecStart is '$exec_start'"
[[ -x $root/usr/bin/khalad ]] || err "no executable $root/usr/bin/khalad"
conf=$root/etc/khala/khalad.conf
[[ -f $conf ]] || err "no $conf"
users=$root/usr/$sysusersdir/khala.conf
[[ -f $users ]] || err "no sysusers.d file at $users"

# The default configuration is valid and puts the socket where the unit's RuntimeDirectory is.
if ! check=$("$root/usr/bin/khalad" --check --config "$conf" 2>&1); then
    err "khalad --check --config $conf: $check"
fi
grep -qx 'socket = /run/khala/default.sock' <<<"$check" || err "the default socket is not /run/khala/default.sock"
grep -qx 'socket_group = khala' <<<"$check" || err "the default socket_group is not khala"
grep -qx 'path = /var/lib/khala/default/l2' <<<"$check" || err "the default L2 path is not under StateDirectory"

# An operator's khalad.conf survives a second install.
echo '# edited by the operator' >>"$conf"
DESTDIR=$root "$cmake" --install "$build" --prefix /usr >"$tmp/install3.log" 2>&1 ||
    err "the second install failed"
tail -n 1 "$conf" | grep -q 'edited by the operator' || err "a second install overwrote $conf"

# The sysusers.d file makes the user and group the unit names.
if command -v systemd-sysusers >/dev/null 2>&1; then
    mkdir -p "$tmp/sysroot/etc"
    if ! out=$(systemd-sysusers --root="$tmp/sysroot" "$users" 2>&1); then
        err "systemd-sysusers $users: $out"
    fi
    grep -q '^khala:' "$tmp/sysroot/etc/passwd" 2>/dev/null || err "sysusers made no khala user"
    grep -q '^khala:' "$tmp/sysroot/etc/group" 2>/dev/null || err "sysusers made no khala group"
fi

[[ $fail -eq 0 ]] && echo "check_install: the installed tree is complete"
exit $fail

#!/usr/bin/env bash
# CTest man_pages: every man page renders without a warning, through groff (-ww: all warnings)
# and through man-db as a reader would see it. Usage: check_man.sh PAGE...
set -uo pipefail
fail=0
for page in "$@"; do
    out=$(groff -ww -man -z "$page" 2>&1)
    if [[ -n "$out" ]]; then
        echo "check_man: groff warns on $page:"$'\n'"$out" >&2
        fail=1
    fi
    if command -v man >/dev/null 2>&1; then
        out=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
        if [[ -n "$out" ]]; then
            echo "check_man: man warns on $page:"$'\n'"$out" >&2
            fail=1
        fi
    fi
    # A page must say what it is: NAME, SYNOPSIS and SEE ALSO sections.
    for section in NAME SYNOPSIS "SEE ALSO"; do
        if ! grep -Eq "^\.SH \"?$section\"?\$" "$page"; then
            echo "check_man: $page has no $section section" >&2
            fail=1
        fi
    done
done
[[ $fail -eq 0 ]] && echo "check_man: $# pages render without warnings"
exit $fail

#!/bin/sh
# The C test of the core under ThreadSanitizer or on aarch64 (qemu-user), for
# `tox -e c`; the test suite does the same from tests/test_c_core.py.
#
#   sh tests/c/run.sh tsan    OUTDIR   ThreadSanitizer build, --quick run
#   sh tests/c/run.sh aarch64 OUTDIR   cross-built for aarch64 (LSE atomics and
#                                      exclusive loops), --quick runs in qemu
#
# Run from the repository root.  A missing toolchain is reported once and the
# script exits 0 (skipped); a failed build or run exits non-zero.
set -eu
what="$1"
out="$2"
CC="${CC:-cc}"
A64CC="${GB_CC_AARCH64:-aarch64-linux-gnu-gcc}"
WARN="-std=c11 -pthread -Wall -Wextra -Wno-unused-parameter -Werror"
mkdir -p "$out"
cat >"$out/probe.c" <<'EOF'
#include <pthread.h>
static void *f(void *p) { return p; }
int main(void) { pthread_t t; pthread_create(&t, 0, f, 0); return pthread_join(t, 0); }
EOF

case "$what" in
tsan)
    # flags explained in tests/test_c_core.py (TSAN_FLAGS)
    flags="-O1 -g -fno-omit-frame-pointer -fsanitize=thread -fno-builtin -Wno-tsan"
    # shellcheck disable=SC2086
    if ! { $CC -pthread $flags "$out/probe.c" -o "$out/probe" 2>/dev/null && "$out/probe"; }; then
        echo "skipped: $CC cannot build and run ThreadSanitizer programs (Debian: apt-get install libtsan2)"
        exit 0
    fi
    # shellcheck disable=SC2086
    $CC $WARN $flags -I. tests/c/test_ring.c -o "$out/test_ring_tsan"
    TSAN_OPTIONS="halt_on_error=0 history_size=4 suppressions=$(pwd)/tests/c/tsan.supp" \
        "$out/test_ring_tsan" --quick 2>"$out/tsan.log" || { cat "$out/tsan.log" >&2; exit 1; }
    if grep -q ThreadSanitizer "$out/tsan.log"; then
        cat "$out/tsan.log" >&2
        exit 1
    fi
    ;;
aarch64)
    qemu=""
    for q in qemu-aarch64-static qemu-aarch64; do
        if command -v "$q" >/dev/null 2>&1; then qemu="$q"; break; fi
    done
    if ! command -v "$A64CC" >/dev/null 2>&1 || [ -z "$qemu" ]; then
        echo "skipped: needs $A64CC and qemu-aarch64 (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user-static)"
        exit 0
    fi
    if ! { "$A64CC" -static -pthread "$out/probe.c" -o "$out/probe64" && "$qemu" "$out/probe64"; }; then
        echo "skipped: cannot build and run an aarch64 program with $A64CC and $qemu"
        exit 0
    fi
    for march in "armv8.1-a" "armv8-a -mno-outline-atomics"; do
        echo "== aarch64 -march=$march under $qemu"
        # shellcheck disable=SC2086
        "$A64CC" $WARN -O2 -static -march=$march -I. tests/c/test_ring.c -o "$out/test_ring_a64"
        "$qemu" "$out/test_ring_a64" --quick
    done
    ;;
*)
    echo "usage: sh tests/c/run.sh tsan|aarch64 OUTDIR" >&2
    exit 2
    ;;
esac

#!/bin/sh
# Everything the CI runs: install missing packages, build (release and
# ASan+UBSan), unit tests, black-box tests against both builds, fuzzers for a
# short fixed time.  Exit status non-zero on the first failure.
#   FUZZ_SECONDS (default 20) — time per fuzz target
set -eu
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
PY=/usr/bin/python3   # Debian's python, which has python3-pytest

step() { printf '\n==== %s\n' "$*"; }

step "dependencies"
./scripts/install-deps.sh

step "build (release and ASan+UBSan)"
make -j2
make -j2 SAN=1

step "unit tests"
make -j2 unit
ASAN_OPTIONS=detect_leaks=1 make -j2 SAN=1 unit

step "fuzz corpus replay (ASan+UBSan)"
make -j2 SAN=1 replay
for t in tests/fuzz/fuzz_*.c; do
	name=$(basename "$t" .c)
	corpus=tests/fuzz/corpus/${name#fuzz_}
	[ -d "$corpus" ] && "build/san/replay/$name" "$corpus"
done

# A private temporary root: pytest's shared default prunes other runs' folders.
TMPROOT=$(mktemp -d /tmp/petrel-test.XXXXXX)
trap 'rm -rf "$TMPROOT"' EXIT

step "black-box tests (release build)"
PETREL_BIN=build/petrel $PY -m pytest -q -p no:cacheprovider --basetemp="$TMPROOT/rel" \
	tests/integration

step "black-box tests (ASan+UBSan build)"
PETREL_BIN=build/san/petrel PETREL_SANITIZED=1 $PY -m pytest -q -p no:cacheprovider \
	--basetemp="$TMPROOT/san" tests/integration

step "fuzzing, ${FUZZ_SECONDS}s per target"
make -j2 fuzz
for t in tests/fuzz/fuzz_*.c; do
	name=$(basename "$t" .c)
	corpus=tests/fuzz/corpus/${name#fuzz_}
	work=build/fuzz/work/$name
	rm -rf "$work" && mkdir -p "$work"
	[ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
	echo "-- $name"
	if ! "build/fuzz/$name" -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 \
		-artifact_prefix="build/fuzz/$name-" "$work" >"build/fuzz/$name.log" 2>&1; then
		tail -n 40 "build/fuzz/$name.log"
		echo "fuzz target $name failed; the input is in build/fuzz/$name-*" >&2
		exit 1
	fi
	tail -n 1 "build/fuzz/$name.log"
done

step "all tests passed"

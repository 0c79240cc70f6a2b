#!/usr/bin/env bash
# Builds an optimised vmgpu and prints its benchmark numbers (nothing here is a pass/fail test).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh test
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DVMGPU_WERROR=ON >/dev/null
cmake --build build-release -j"$(nproc)" --target bench_discovery >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 tests/fixtures/build_fixtures.py "$tmp" hgx8 >/dev/null
build-release/tests/bench/bench_discovery "$tmp/hgx8" "${1:-500}"
cmake --build build-release -j"$(nproc)" --target vmgpu-shim >/dev/null
/usr/bin/python3 tests/bench/bench_shim.py build-release "${2:-5}"
cmake --build build-release -j"$(nproc)" --target vmgpu-agent vg_sysfs_mock >/dev/null
/usr/bin/python3 tests/bench/bench_agent.py build-release "${3:-2000}"

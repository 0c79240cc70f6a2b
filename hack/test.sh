#!/usr/bin/env bash
# Builds vmgpu with -Werror, ASan and UBSan, and runs every test; then runs the unit tests
# under valgrind in a plain build. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh test

jobs=$(nproc)
cmake -S . -B build-ci -DCMAKE_BUILD_TYPE=Debug -DVMGPU_WERROR=ON -DVMGPU_SANITIZE=ON >/dev/null
cmake --build build-ci -j"$jobs"
(cd build-ci && ctest --output-on-failure -j"$jobs")

cmake -S . -B build-valgrind -DCMAKE_BUILD_TYPE=Debug -DVMGPU_WERROR=ON >/dev/null
cmake --build build-valgrind -j"$jobs"
(cd build-valgrind && ctest --output-on-failure -L valgrind -T memcheck \
  --overwrite MemoryCheckCommandOptions="--leak-check=full --error-exitcode=99 --errors-for-leak-kinds=definite")
echo "hack/test.sh: all tests passed"

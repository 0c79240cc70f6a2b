#!/usr/bin/env bash
# Fuzzes every text parser that takes outside input (BDFs, config YAML, vmgpu.io/ annotations,
# selectors, spec.json, the guest's ready line, reserved regions) with libFuzzer under ASan and
# UBSan. Usage: hack/fuzz.sh [SECONDS per run, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh test
command -v clang >/dev/null || { sudo_apt=""; [ "$(id -u)" -eq 0 ] || sudo_apt=sudo;
  $sudo_apt apt-get install -y -qq --no-install-recommends clang libclang-rt-dev >/dev/null; }
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DVMGPU_SANITIZE=ON -DVMGPU_FUZZ=ON \
  >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_parsers >/dev/null
corpus=build-fuzz/corpus
mkdir -p "$corpus"
seed() { printf '%b' "$2" >"$corpus/$1"; }
seed bdf '\x000000:3b:00.0'
seed config '\x01sysfs_root: /sys\ngpu_filter:\n  ids: ["1234:11e8"]\nallow_boot_vga: true\n'
seed annotations '\x02vmgpu.io/gpu-count=2\nvmgpu.io/gpu-selector=numa in (0, 1),product=h100\n'
seed selector '\x03vendor!=1002,pcie-root in (pci0000:10,pci0000:50)'
seed spec '\x04{"id":"a-1","kernel":"/k","gpus":[{"bdf":"0000:01:00.0","vendor_id":"0x10de","device_id":"0x2330","companions":["0000:01:00.1"]}],"network":{"host_cidr":"10.88.0.1/30","guest_addr":"10.88.0.2"}}'
seed ready '\x05VMGPU-READY id=fuzz-1 pci=10de:2330,1af4:1041 net=ok'
seed regions '\x060x00000000c0000000 0x00000000c7ffffff direct\n0x1 0x2 msi\n'
build-fuzz/tests/fuzz/fuzz_parsers -max_total_time="${1:-60}" -max_len=4096 "$corpus"

#!/usr/bin/env bash
# The README's main command: build vmgpu, check this host for GPU passthrough, and show the
# inventory and reasons on fixture nodes (an 8-GPU HGX board and hosts with typical problems).
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh demo
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$(nproc)" --target vmgpuctl vmgpu-agent >/dev/null
bin=build-release

section() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

section "vmgpuctl doctor on this host"
"$bin/cli/vmgpuctl" doctor || echo "(doctor exited $?: passthrough cannot work on this host, see the reasons above)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 tests/fixtures/build_fixtures.py "$tmp" hgx8 shared-nic gb10 boot-vga >/dev/null
empty="$tmp/empty"
mkdir -p "$empty"
printf '# demo: defaults only\n' >"$tmp/config.yaml"

section "vmgpu-agent --list-gpus on an 8-GPU HGX fixture (two NUMA nodes, PCIe switches)"
"$bin/agent/vmgpu-agent" --config "$tmp/config.yaml" --sysfs-root "$tmp/hgx8" --list-gpus -o table

for node in shared-nic gb10 boot-vga; do
  section "vmgpuctl doctor -o wide on the '$node' fixture (GPU rows)"
  "$bin/cli/vmgpuctl" doctor -o wide --config "$tmp/config.yaml" --sysfs-root "$tmp/$node" \
    --dev-root "$empty" --modules-dir "$empty" | sed -n '/^INDEX/,$p' || true
done
section "done"
echo "Troubleshooting for each reason: docs/troubleshooting.md"

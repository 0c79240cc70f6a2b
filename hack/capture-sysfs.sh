#!/usr/bin/env bash
# Captures the PCI part of a host's sysfs into a tarball that vmgpu tests read
# like a fixture built by tests/fixtures/build_fixtures.py.
#
#   hack/capture-sysfs.sh [-s SYSROOT] OUTPUT.tar.gz
#
# The tarball holds one directory, sys/, laid out like /sys (see
# tests/fixtures/README.md): extract it and point the code at .../sys.
# It only reads SYSROOT (default /sys); nothing is ever written there.
# Run it as root to get full config space (others read only 64 bytes).
set -euo pipefail
shopt -s nullglob

readonly DEVICE_ATTRIBUTES=(vendor device subsystem_vendor subsystem_device class revision
	numa_node irq enable local_cpulist driver_override reset_method boot_vga resource)
readonly DRIVER_CONTROL_FILES=(bind unbind new_id remove_id)
readonly MODULES=(vfio vfio_pci vfio_iommu_type1 kvm kvm_intel kvm_amd vhost_vsock)
readonly CONFIG_BYTES=256
# Written by vgfixture for the LD_PRELOAD mock: what drivers_probe would bind.
readonly NATIVE_DRIVER_FILE=.mock_native_driver

die() {
	echo "capture-sysfs: $*" >&2
	exit 1
}

usage() {
	echo "usage: $0 [-s SYSROOT] OUTPUT.tar.gz" >&2
	exit 2
}

sysroot=/sys
while getopts "s:h" option; do
	case $option in
	s) sysroot=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 ]] || usage
output=$1

sysroot=$(realpath -e -- "$sysroot") || die "no such sysfs root: $sysroot"
[[ -d $sysroot/bus/pci/devices ]] || die "$sysroot has no bus/pci/devices; is it a sysfs tree?"
output_abs=$(realpath -m -- "$output")
case $output_abs in
"$sysroot" | "$sysroot"/*) die "refusing to write $output inside $sysroot" ;;
esac
[[ -d $(dirname -- "$output_abs") ]] || die "no such directory: $(dirname -- "$output_abs")"

work=$(mktemp -d "${TMPDIR:-/tmp}/capture-sysfs.XXXXXX")
partial=$output_abs.partial.$$
trap 'rm -rf -- "$work" "$partial"' EXIT
dest=$work/sys
read_errors=$work/read-errors

# Copies a text attribute if it can be read; sysfs lists files that fail on
# read.  The read builtin saves a cat per file (thousands on a big host); it
# stops at the first NUL, which text attributes never contain.
copy_attribute() { # SRC DST
	local src=$1 dst=$2 value=
	[[ -f $src ]] || return 0
	IFS= read -r -d '' value 2>"$read_errors" <"$src" || true
	if [[ -s $read_errors ]]; then
		return 0
	fi
	printf '%s' "$value" >"$dst"
}

# Copies the start of the binary config space (others than root get 64 bytes).
copy_config() { # SRC DST
	[[ -f $1 ]] || return 0
	head -c "$CONFIG_BYTES" -- "$1" >"$2" 2>/dev/null || rm -f -- "$2"
}

# Sets REPLY to the relative path from directory FROM to TARGET, both given
# relative to the capture root.  Pure bash: a capture makes ~1000 links.
relative_path() { # FROM TARGET
	local -a from to
	local i=0 j result=
	IFS=/ read -ra from <<<"$1"
	IFS=/ read -ra to <<<"$2"
	while ((i < ${#from[@]} && i < ${#to[@]})) && [[ ${from[i]} == "${to[i]}" ]]; do
		i=$((i + 1))
	done
	for ((j = i; j < ${#from[@]}; j++)); do result+=../; done
	for ((j = i; j < ${#to[@]}; j++)); do result+=${to[j]}/; done
	REPLY=${result%/}
}

# Links with relative targets, so the extracted tree works wherever it lands.
link_relative() { # LINK TARGET (both relative to the capture root; LINK's dir exists)
	local link=$1 target=$2
	relative_path "${link%/*}" "$target"
	ln -s -- "$REPLY" "$dest/$link"
}

# Where a sysfs link points, relative to SYSROOT; fails for targets outside it.
sysfs_relative_target() { # LINK
	local real
	real=$(realpath -e -- "$1" 2>/dev/null) || return 1
	case $real in
	"$sysroot"/*) REPLY=${real#"$sysroot"/} ;;
	*) return 1 ;;
	esac
}

ensure_driver() { # NAME
	local dir=$dest/bus/pci/drivers/$1 control
	[[ -d $dir ]] && return 0
	mkdir -p -- "$dir"
	for control in "${DRIVER_CONTROL_FILES[@]}"; do
		: >"$dir/$control"
	done
}

mkdir -p -- "$dest/devices" "$dest/bus/pci/devices" "$dest/bus/pci/drivers" \
	"$dest/kernel/iommu_groups" "$dest/module"
for control in drivers_probe rescan; do
	if [[ -e $sysroot/bus/pci/$control ]]; then
		: >"$dest/bus/pci/$control"
	fi
done

# Drivers with nothing bound (vfio-pci before first use) still matter.
for driver_dir in "$sysroot"/bus/pci/drivers/*/; do
	driver_dir=${driver_dir%/}
	ensure_driver "${driver_dir##*/}"
done

declare -A device_rel_of # BDF -> its dir, relative to the capture root

for device_link in "$sysroot"/bus/pci/devices/*; do
	[[ -L $device_link ]] || continue
	bdf=${device_link##*/}
	if ! sysfs_relative_target "$device_link"; then
		echo "capture-sysfs: skipping $bdf: its target lies outside $sysroot" >&2
		continue
	fi
	device_rel=$REPLY
	device_rel_of[$bdf]=$device_rel
	source_dir=$sysroot/$device_rel
	device_dir=$dest/$device_rel
	# Only the dirs on the path are created, not the rest of the parents' subtrees.
	mkdir -p -- "$device_dir"
	link_relative "bus/pci/devices/$bdf" "$device_rel"

	for attribute in "${DEVICE_ATTRIBUTES[@]}"; do
		copy_attribute "$source_dir/$attribute" "$device_dir/$attribute"
	done
	copy_config "$source_dir/config" "$device_dir/config"

	driver=
	if [[ -L $source_dir/driver ]]; then
		driver_target=$(readlink -- "$source_dir/driver")
		driver=${driver_target##*/}
		ensure_driver "$driver"
		link_relative "$device_rel/driver" "bus/pci/drivers/$driver"
		link_relative "bus/pci/drivers/$driver/$bdf" "$device_rel"
	fi
	# A capture of a fixture keeps the fixture's answer.  On a real host the
	# bound driver is the answer, except vfio-pci, which never binds by itself.
	if [[ -f $source_dir/$NATIVE_DRIVER_FILE ]]; then
		copy_attribute "$source_dir/$NATIVE_DRIVER_FILE" "$device_dir/$NATIVE_DRIVER_FILE"
	elif [[ -n $driver && $driver != vfio-pci ]]; then
		printf '%s\n' "$driver" >"$device_dir/$NATIVE_DRIVER_FILE"
	fi

	if [[ -L $source_dir/iommu_group ]]; then
		group_target=$(readlink -- "$source_dir/iommu_group")
		group_rel=kernel/iommu_groups/${group_target##*/}
		mkdir -p -- "$dest/$group_rel/devices"
		link_relative "$device_rel/iommu_group" "$group_rel"
	fi
done

for source_group in "$sysroot"/kernel/iommu_groups/*/; do
	source_group=${source_group%/}
	group_rel=kernel/iommu_groups/${source_group##*/}
	mkdir -p -- "$dest/$group_rel/devices"
	copy_attribute "$source_group/type" "$dest/$group_rel/type"
	copy_attribute "$source_group/reserved_regions" "$dest/$group_rel/reserved_regions"
	for member in "$source_group"/devices/*; do
		member_name=${member##*/}
		member_rel=${device_rel_of[$member_name]:-}
		if [[ -z $member_rel ]]; then
			if ! sysfs_relative_target "$member"; then
				echo "capture-sysfs: skipping group member $member: target lies outside $sysroot" >&2
				continue
			fi
			# Non-PCI members (platform devices on arm64) get an empty dir so
			# the link still resolves and the group still lists them.
			member_rel=$REPLY
			mkdir -p -- "$dest/$member_rel"
		fi
		link_relative "$group_rel/devices/$member_name" "$member_rel"
	done
done

for module in "${MODULES[@]}"; do
	if [[ -d $sysroot/module/$module ]]; then
		mkdir -p -- "$dest/module/$module"
	fi
done

for source_pool in "$sysroot"/kernel/mm/hugepages/*/; do
	source_pool=${source_pool%/}
	pool_dir=$dest/kernel/mm/hugepages/${source_pool##*/}
	mkdir -p -- "$pool_dir"
	copy_attribute "$source_pool/nr_hugepages" "$pool_dir/nr_hugepages"
	copy_attribute "$source_pool/free_hugepages" "$pool_dir/free_hugepages"
done

{
	echo "source=capture-sysfs"
	echo "hostname=$(uname -n)"
	echo "kernel=$(uname -r)"
	echo "machine=$(uname -m)"
	echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cmdline=$(cat /proc/cmdline 2>/dev/null || true)"
	echo "sysroot=$sysroot"
} >"$dest/CAPTURE-INFO"

tar --sort=name --owner=0 --group=0 --numeric-owner -C "$work" -czf "$partial" sys
mv -f -- "$partial" "$output_abs"
echo "captured $(find "$dest/bus/pci/devices" -mindepth 1 -maxdepth 1 | wc -l) PCI functions from $sysroot into $output"

/* A sandbox spec: everything one vmgpu-shim needs to run one VM, read from <dir>/spec.json. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/bdf.h"

struct vg_error;

#define VG_SANDBOX_ID_MAX 64
#define VG_SPEC_MAX_GPUS 16
#define VG_SPEC_MAX_COMPANIONS 7
#define VG_SPEC_MAX_MODULES 8

enum vg_arch { VG_ARCH_X86_64, VG_ARCH_AARCH64 };
enum vg_accel { VG_ACCEL_KVM, VG_ACCEL_TCG };

struct vg_spec_gpu {
	struct vg_bdf addr;
	char bdf[VG_BDF_STRLEN];
	uint16_t vendor_id;
	uint16_t device_id;
	int iommu_group; /* -1 when unknown */
	struct vg_bdf companions[VG_SPEC_MAX_COMPANIONS];
	size_t n_companions;
	uint64_t bar_bytes; /* sum of the GPU's BAR sizes, sizes the 64-bit MMIO window */
};

struct vg_spec_network {
	bool enabled;
	char tap_name[16]; /* IFNAMSIZ; derived from the id when empty */
	uint32_t host_addr; /* host byte order; a /30: host .1, guest .2 */
	uint32_t guest_addr;
	int prefix_len;
	bool nat;
};

struct vg_sandbox_spec {
	char id[VG_SANDBOX_ID_MAX + 1]; /* [a-z0-9][a-z0-9-]*, also names the TAP */
	enum vg_arch arch;
	enum vg_accel accel;
	int gic_version; /* aarch64 only: 3, or 0 for "host" (KVM) */
	unsigned vcpus;
	uint64_t memory_mib;
	bool hugepages;
	bool prealloc;
	char qemu_binary[PATH_MAX];
	/* QEMU runs as this uid/gid (both -1: as the shim, root, which is only a stopgap). */
	int64_t qemu_uid;
	int64_t qemu_gid;
	char kernel[PATH_MAX];
	char initrd[PATH_MAX];
	char cmdline_extra[512];
	char modules[VG_SPEC_MAX_MODULES][64]; /* loaded by the guest init (nvidia on real hosts) */
	size_t n_modules;
	struct vg_spec_gpu gpus[VG_SPEC_MAX_GPUS];
	size_t n_gpus;
	struct vg_spec_network network;
	char sysfs_root[PATH_MAX];
	char dev_root[PATH_MAX]; /* where /dev/vfio/<group> appears; "/dev" */
	unsigned ready_timeout_s;
	unsigned stop_timeout_s;
};

/* Paths that live in the sandbox directory, filled in by the shim before the argv is built. */
struct vg_sandbox_paths {
	char dir[PATH_MAX];
	char qmp_socket[108]; /* sun_path: unix socket paths are short */
	char ready_socket[108];
	char console_log[PATH_MAX];
	char qemu_pidfile[PATH_MAX];
};

int vg_spec_parse_json(const char *text, struct vg_sandbox_spec *spec, struct vg_error **err);
int vg_spec_load(const char *path, struct vg_sandbox_spec *spec, struct vg_error **err);
/* The host's architecture and accelerator: KVM when /dev/kvm can create a VM, else TCG. */
enum vg_arch vg_arch_host(void);
const char *vg_arch_name(enum vg_arch arch);
bool vg_sandbox_id_is_valid(const char *id);

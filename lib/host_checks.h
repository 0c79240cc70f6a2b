/* Host preflight for GPU passthrough: KVM, IOMMU, VFIO modules, QEMU, TAP, vsock, hugepages. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

struct vg_error;
struct vg_sysfs;

enum vg_check_status { VG_CHECK_OK, VG_CHECK_WARN, VG_CHECK_FAIL };

struct vg_check {
	char name[32];
	enum vg_check_status status;
	char detail[512];
};

/* Where the host is; tests point these at fixture trees. */
struct vg_host_env {
	const struct vg_sysfs *sysfs;
	const char *dev_root; /* "/dev" */
	const char *proc_root; /* "/proc" */
	const char *modules_dir; /* NULL: /lib/modules/$(uname -r) */
	const char *qemu_binary; /* NULL: qemu-system-<arch> from PATH */
};

#define VG_HOST_MAX_CHECKS 12

struct vg_host_report {
	char arch[65];
	char kernel_release[128];
	char hostname[256];
	struct vg_check checks[VG_HOST_MAX_CHECKS];
	size_t n_checks;
	bool vfio_pci_usable;
	char vfio_pci_problem[256];
	char qemu_path[PATH_MAX];
	char qemu_version[64];
};

void vg_host_checks_run(const struct vg_host_env *env, struct vg_host_report *report);
const char *vg_check_status_name(enum vg_check_status status);
/* The QEMU binary for an architecture name as uname reports it. */
const char *vg_qemu_binary_for_arch(const char *arch);
/* "QEMU emulator version 7.2.19 (Debian ...)" -> "7.2.19". */
int vg_parse_qemu_version(const char *text, char *out, size_t size);

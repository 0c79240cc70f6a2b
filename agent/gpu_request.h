/* A sandbox request read from the vmgpu.io/ annotations of a PodSandboxConfig, parsed strictly:
 * which GPUs (a count, named devices or an attribute selector) and the VM's shape. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/bdf.h"

struct vg_error;

/* One annotation as it came over the wire; a NULL value reads as "". */
struct vg_kv {
	const char *key;
	const char *value;
};

#define VG_ANNOTATION_PREFIX "vmgpu.io/"

#define VG_REQ_MAX_GPUS 16
#define VG_SELECTOR_TEXT_MAX 512 /* the whole selector, NUL included */
#define VG_SELECTOR_MAX_TERMS 8
#define VG_SELECTOR_MAX_VALUES 16 /* per in-list */
#define VG_SELECTOR_VALUE_MAX 64 /* one value, NUL included */
#define VG_VM_CMDLINE_MAX 512 /* NUL included */
#define VG_VM_MAX_MODULES 8
#define VG_VM_MODULE_NAME_MAX 64 /* NUL included */

enum vg_selector_key {
	VG_SEL_PRODUCT, /* case-insensitive substring of the GPU's name */
	VG_SEL_VENDOR, /* PCI vendor id */
	VG_SEL_DEVICE, /* PCI device id */
	VG_SEL_NUMA, /* NUMA node, -1 for unknown */
	VG_SEL_PCIE_ROOT, /* root bus, "pci0000:10" */
};

enum vg_selector_op {
	VG_SEL_EQ, /* key=value */
	VG_SEL_NE, /* key!=value */
	VG_SEL_IN, /* key in (v1, v2, ...) */
};

struct vg_selector_value {
	/* Normalised: product as given, vendor/device as 4 lowercase hex digits, numa in decimal,
	 * pcie-root in lowercase. */
	char text[VG_SELECTOR_VALUE_MAX];
	long number; /* vendor, device and numa */
};

struct vg_selector_term {
	enum vg_selector_key key;
	enum vg_selector_op op;
	struct vg_selector_value values[VG_SELECTOR_MAX_VALUES]; /* EQ and NE hold one */
	size_t n_values;
};

/* Terms are ANDed. */
struct vg_selector {
	char text[VG_SELECTOR_TEXT_MAX]; /* the annotation, trimmed, for messages */
	struct vg_selector_term terms[VG_SELECTOR_MAX_TERMS];
	size_t n_terms;
};

/* One item of vmgpu.io/gpu-devices: a stable index or a PCI address. */
struct vg_gpu_ref {
	bool is_index;
	unsigned index;
	struct vg_bdf addr; /* when !is_index */
	char text[VG_BDF_STRLEN]; /* normalised: decimal index or lowercase canonical BDF */
};

enum vg_gpu_request_kind {
	VG_REQ_NONE, /* no GPU */
	VG_REQ_COUNT, /* `count` GPUs of any kind (vmgpu.io/gpu-count, or vmgpu.io/gpu=any) */
	VG_REQ_DEVICES, /* exactly the GPUs in `devices` */
	VG_REQ_SELECTOR, /* `count` GPUs that match `selector` */
};

struct vg_gpu_request {
	enum vg_gpu_request_kind kind;
	unsigned count; /* GPUs wanted; n_devices for DEVICES, 0 for NONE */
	bool any; /* came from vmgpu.io/gpu=any */
	struct vg_gpu_ref devices[VG_REQ_MAX_GPUS];
	size_t n_devices;
	struct vg_selector selector; /* SELECTOR only */
};

enum vg_vm_network { VG_VM_NETWORK_TAP, VG_VM_NETWORK_NONE };
enum vg_vm_arch { VG_VM_ARCH_X86_64, VG_VM_ARCH_AARCH64 };
enum vg_vm_accel { VG_VM_ACCEL_KVM, VG_VM_ACCEL_TCG };

/* The VM's shape. Each has_* says whether the annotation was given; where it was not, the field
 * holds the default (network: tap) or nothing (the agent picks kernel, arch, accel, ...). */
struct vg_vm_shape {
	bool has_kernel, has_initrd, has_vcpus, has_memory_mib, has_cmdline, has_modules,
		has_network, has_arch, has_accel;
	char kernel[PATH_MAX]; /* absolute */
	char initrd[PATH_MAX]; /* absolute */
	unsigned vcpus; /* 1..256 */
	uint64_t memory_mib; /* 64..4194304 */
	char cmdline[VG_VM_CMDLINE_MAX]; /* appended to the agent's own; no control characters */
	char modules[VG_VM_MAX_MODULES][VG_VM_MODULE_NAME_MAX]; /* [a-z0-9_-]+ */
	size_t n_modules;
	enum vg_vm_network network;
	enum vg_vm_arch arch;
	enum vg_vm_accel accel;
};

/* Reads the vmgpu.io/ annotations; every other key is ignored. An unknown vmgpu.io/ key, a
 * malformed value, a key given twice or two keys that conflict fail with EINVAL and a message
 * that names the key(s). *gpu and *vm are written only on success. */
int vg_sandbox_request_parse(const struct vg_kv *annotations, size_t n, struct vg_gpu_request *gpu,
			     struct vg_vm_shape *vm, struct vg_error **err);

/* Parses one selector (the value of vmgpu.io/gpu-selector); *out is written only on success. */
int vg_selector_parse(const char *text, struct vg_selector *out, struct vg_error **err);

const char *vg_selector_key_name(enum vg_selector_key key);

/* The guest's ready line on the virtio-serial port io.vmgpu.ready. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vg_error;
struct vg_sandbox_spec;

#define VG_READY_MAX_PCI 64

struct vg_ready_report {
	bool ready; /* false: the guest reported VMGPU-FAILED */
	char reason[256]; /* VMGPU-FAILED's reason */
	uint32_t pci[VG_READY_MAX_PCI]; /* vendor << 16 | device */
	size_t n_pci;
	char net[8]; /* ok, fail or none */
};

/* Parses "VMGPU-READY id=<id> pci=<v:d,...> net=<ok|fail|none>" or
 * "VMGPU-FAILED id=<id> reason=<text>"; the id must be the sandbox's. */
int vg_ready_parse(const char *line, const char *sandbox_id, struct vg_ready_report *report,
		   struct vg_error **err);
/* Every assigned GPU must be among the guest's PCI devices; the message names the missing. */
int vg_ready_check_gpus(const struct vg_ready_report *report, const struct vg_sandbox_spec *spec,
			struct vg_error **err);

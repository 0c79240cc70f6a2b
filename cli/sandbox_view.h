/* What the CLI shows of one sandbox: the CRI status plus the agent's "vmgpu" verbose info (a
 * JSON object: state, reason, gpus, tap, host_ip, guest_ip, console_log, shim_pid, qemu_pid,
 * dir). Every key may be missing: an older or newer agent still gets a table. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "runtime/v1/api.pb-c.h"

struct vg_sandbox_view {
	json_object *vmgpu; /* owned; NULL when the agent sent no parsable "vmgpu" info */
	const char *state; /* the vmgpu state, else the CRI one ("ready", "notready") */
	const char *reason; /* "" when none */
	const char *tap, *host_ip, *guest_ip, *console_log, *dir; /* "" when absent */
	long long shim_pid, qemu_pid; /* 0 when absent */
	char *gpus; /* owned; the BDFs joined with ",", "" when none */
	size_t n_gpus;
};

/* Reads response (which must outlive the view: strings point into it or into view->vmgpu). */
void vg_sandbox_view_init(struct vg_sandbox_view *view,
			  const Runtime__V1__PodSandboxStatusResponse *response);
void vg_sandbox_view_clear(struct vg_sandbox_view *view);

/* exited and failed: the VM is gone and its console log will not grow. */
bool vg_sandbox_state_is_final(const char *state);

/* The whole response for -o json/yaml, with each info value decoded from JSON where it is. */
json_object *vg_sandbox_status_to_json(const Runtime__V1__PodSandboxStatusResponse *response);

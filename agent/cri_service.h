/* runtime.v1.RuntimeService, the sandbox subset, wire-compatible with CRI. */
#pragma once

struct vg_error;
struct vg_grpc_server;
struct vg_sandboxes;

int vg_cri_service_register(struct vg_grpc_server *server, struct vg_sandboxes *sandboxes,
			    struct vg_error **err);

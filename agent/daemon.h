/* The long-running agent: gRPC servers, the device table, the sandbox table. */
#pragma once

struct vg_config;
struct vg_error;

/* Serves until SIGTERM or SIGINT; sandboxes keep running after it returns. */
int vg_agent_serve(const struct vg_config *config, struct vg_error **err);

/* record.json: what the agent knows about a sandbox, written before any side effect. */
#pragma once

#include "agent/sandboxes.h"

struct vg_error;

int vg_sandbox_record_save(const struct vg_sandbox *sb, struct vg_error **err);
/* Fills a zeroed sandbox from <dir>/record.json. */
int vg_sandbox_record_load(const char *dir, struct vg_sandbox *sb, struct vg_error **err);
/* Reads the shim's status.json into the sandbox (state, reason, pids, tap). Returns 0 when the
 * file was there, -ENOENT when not. */
int vg_sandbox_read_shim_status(struct vg_sandbox *sb);
bool vg_sandbox_has_exit_record(const struct vg_sandbox *sb);
int vg_sb_state_parse(const char *text, enum vg_sb_state *out);

/* Shared by sandboxes.c (lifecycle), sandbox_create.c and sandbox_repair.c (recovery). */
#pragma once

#include "agent/sandboxes.h"

struct vg_sandbox *vg_sandbox_new(struct vg_sandboxes *mgr, const char *id);
void vg_sandbox_link(struct vg_sandboxes *mgr, struct vg_sandbox *sb);
/* Spawns the shim; done() runs once the sandbox is ready or has failed. */
int vg_sandbox_launch(struct vg_sandbox *sb, vg_sb_done_fn done, void *ctx, struct vg_error **err);
int vg_sandbox_watch_shim(struct vg_sandbox *sb, struct vg_error **err);
int vg_sandbox_stop(struct vg_sandbox *sb, bool then_remove, vg_sb_done_fn done, void *ctx,
		    struct vg_error **err);
/* Undo what a dead shim may have left: replay the bind journal, delete the TAP and the NAT
 * table, kill a QEMU that somehow outlived it. Idempotent; logs what it could not do. */
void vg_sandbox_repair(struct vg_sandboxes *mgr, struct vg_sandbox *sb);
int vg_sandbox_remove_dir(const char *dir, struct vg_error **err);
/* RunPodSandbox calls still waiting for PodResources get done() with ECANCELED. */
void vg_sandboxes_cancel_lookups(struct vg_sandboxes *mgr);

/* A minimal QMP client for the shim: connect, negotiate, run a command with a deadline. */
#pragma once

#include <stddef.h>

struct vg_error;

struct vg_qmp {
	int fd;
	char buf[16384];
	size_t len;
};

/* Connects (retrying while QEMU creates the socket), reads the greeting and leaves
 * capabilities negotiation done. */
int vg_qmp_connect(const char *path, int timeout_ms, struct vg_qmp *qmp, struct vg_error **err);
/* Sends {"execute": command} and waits for its return or error; events are skipped. */
int vg_qmp_execute(struct vg_qmp *qmp, const char *command, int timeout_ms,
		   struct vg_error **err);
void vg_qmp_close(struct vg_qmp *qmp);

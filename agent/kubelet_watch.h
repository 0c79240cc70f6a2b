/* Notices the kubelet (re)starting in its device-plugins directory. A starting kubelet deletes
 * every socket there, ours included, then serves kubelet.sock anew; a device plugin must then
 * serve again and register again. inotify reports both events at once; a periodic stat is the
 * safety net for what inotify cannot see (the directory itself removed and made again, a
 * queue overflow, a directory that did not exist yet). */
#pragma once

#include <stdbool.h>

struct vg_error;
struct vg_grpc_loop;
struct vg_kubelet_watch;

enum vg_kubelet_event {
	VG_KUBELET_STARTED,	   /* kubelet.sock was created (or is another file than before) */
	VG_KUBELET_SOCKET_REMOVED, /* a socket in the directory went away: check ours */
	VG_KUBELET_DIR_GONE,	   /* the directory went away: our sockets went with it */
	VG_KUBELET_DIR_BACK,	   /* the directory exists (again): serve in it */
	VG_KUBELET_TICK,	   /* the periodic safety net: check our sockets */
};

typedef void (*vg_kubelet_event_fn)(void *ctx, enum vg_kubelet_event event);

/* Watches dir from the loop; fn runs on the loop thread. A missing directory is not an error:
 * it is looked for again every interval_ms. */
int vg_kubelet_watch_start(struct vg_grpc_loop *loop, const char *dir, int interval_ms,
			   vg_kubelet_event_fn fn, void *ctx, struct vg_kubelet_watch **out,
			   struct vg_error **err);
/* Whether the directory was there at the last look. */
bool vg_kubelet_watch_dir_present(const struct vg_kubelet_watch *watch);
/* The kubelet's registration socket, "<dir>/kubelet.sock". */
const char *vg_kubelet_watch_socket(const struct vg_kubelet_watch *watch);
void vg_kubelet_watch_free(struct vg_kubelet_watch *watch); /* accepts NULL */

/* What a node agent writes to the API server, one idempotent reconcile step per call: its
 * node's labels, an Event, its ResourceSlice. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/kube/kube_objects.h"

struct vg_error;
struct vg_kube_client;

/* GET /api/v1/nodes/<node>, then a merge-patch PATCH of the labels we own that differ from
 * desired (stale ones set to null); no PATCH when they all match. uid gets the node's
 * metadata.uid; *patched says whether a PATCH was sent. */
int vg_kube_node_apply_labels(struct vg_kube_client *client, const char *node,
			      json_object *desired, char uid[128], bool *patched,
			      struct vg_error **err);

/* POST /api/v1/namespaces/<ns>/events. *status gets the HTTP status, 0 when no answer came:
 * the caller retries those and 5xx/429, and drops an Event the server refused. */
int vg_kube_event_post(struct vg_kube_client *client, const struct vg_kube_event *ev,
		       const char *node, const char *events_namespace, uint64_t unique,
		       long *status, struct vg_error **err);

enum vg_kube_slice_result {
	VG_KUBE_SLICE_UNCHANGED, /* the slice already says this */
	VG_KUBE_SLICE_CREATED,
	VG_KUBE_SLICE_UPDATED,
	VG_KUBE_SLICE_UNSERVED, /* the server has no resource.k8s.io/v1 (before 1.34, or off) */
};

/* Makes the node's ResourceSlice describe gpus: GET it, then POST or PUT (with its
 * resourceVersion) when it differs. The pool generation goes up on every write and never
 * below what the server holds; *generation is the one published afterwards. */
int vg_kube_slice_apply(struct vg_kube_client *client, const char *node, const char *node_uid,
			const struct vg_kube_gpu *gpus, size_t n_gpus, int64_t *generation,
			enum vg_kube_slice_result *result, struct vg_error **err);

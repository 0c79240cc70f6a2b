#include "lib/kube/kube_node_api.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/kube/kube_client.h"

static void json_putp(json_object **obj)
{
	if (*obj != NULL)
		json_object_put(*obj);
}
#define cleanup_json __attribute__((cleanup(json_putp)))

static json_object *get_path(json_object *obj, const char *a, const char *b)
{
	json_object *mid = NULL, *out = NULL;
	if (obj == NULL || !json_object_object_get_ex(obj, a, &mid))
		return NULL;
	if (b == NULL)
		return mid;
	return json_object_object_get_ex(mid, b, &out) ? out : NULL;
}

int vg_kube_node_apply_labels(struct vg_kube_client *client, const char *node,
			      json_object *desired, char uid[128], bool *patched,
			      struct vg_error **err)
{
	char path[300];
	snprintf(path, sizeof(path), "/api/v1/nodes/%s", node);
	*patched = false;
	cleanup_json json_object *current = NULL;
	int ret = vg_kube_call(client, "GET", path, NULL, NULL, &current, err);
	if (ret == -ENOENT)
		return vg_error_prefix(err, "node '%s' is unknown to the API server (check node_name "
					    "or NODE_NAME)",
				       node);
	if (ret < 0)
		return ret;
	json_object *node_uid = get_path(current, "metadata", "uid");
	snprintf(uid, 128, "%s", node_uid ? json_object_get_string(node_uid) : "");
	cleanup_json json_object *patch =
		vg_kube_labels_patch(get_path(current, "metadata", "labels"), desired);
	if (patch == NULL)
		return 0;
	ret = vg_kube_call(client, "PATCH", path, VG_KUBE_MERGE_PATCH, vg_kube_json_text(patch), NULL, err);
	if (ret == 0)
		*patched = true;
	return ret;
}

int vg_kube_event_post(struct vg_kube_client *client, const struct vg_kube_event *ev,
		       const char *node, const char *events_namespace, uint64_t unique,
		       long *status, struct vg_error **err)
{
	char path[200];
	snprintf(path, sizeof(path), "/api/v1/namespaces/%s/events",
		 vg_kube_event_namespace(ev, events_namespace));
	cleanup_json json_object *event = vg_kube_event_object(ev, node, events_namespace, unique);
	struct vg_kube_reply reply = { 0 };
	*status = 0;
	int ret = vg_kube_request(client, "POST", path, VG_KUBE_JSON, vg_kube_json_text(event), &reply, err);
	if (ret == 0) {
		*status = reply.status;
		ret = vg_kube_reply_check(&reply, "POST", path, err);
	}
	vg_kube_reply_clear(&reply);
	return ret;
}

static int64_t slice_generation(json_object *slice)
{
	json_object *gen = NULL;
	json_object *pool = get_path(slice, "spec", "pool");
	return pool && json_object_object_get_ex(pool, "generation", &gen)
		       ? json_object_get_int64(gen)
		       : 0;
}

int vg_kube_slice_apply(struct vg_kube_client *client, const char *node, const char *node_uid,
			const struct vg_kube_gpu *gpus, size_t n_gpus, int64_t *generation,
			enum vg_kube_slice_result *result, struct vg_error **err)
{
	char name[256], path[400];
	if (vg_kube_slice_name(node, name, sizeof(name)) < 0)
		return vg_error_set(err, ENAMETOOLONG, "node name '%s' is too long for a slice name",
				    node);
	snprintf(path, sizeof(path), VG_KUBE_SLICE_API "/%s", name);
	struct vg_kube_reply reply = { 0 };
	int ret = vg_kube_request(client, "GET", path, NULL, NULL, &reply, err);
	if (ret < 0)
		return ret;
	cleanup_json json_object *existing = NULL;
	if (reply.status == 404 && !vg_kube_reply_is_missing_object(&reply)) {
		/* A bare 404 page, not a Status about our object: the API is not served. */
		vg_kube_reply_clear(&reply);
		*result = VG_KUBE_SLICE_UNSERVED;
		return 0;
	}
	if (reply.status != 404) {
		ret = vg_kube_reply_check(&reply, "GET", path, err);
		existing = TAKE_PTR(reply.body);
	}
	vg_kube_reply_clear(&reply);
	if (ret < 0)
		return ret;

	int64_t have = existing ? slice_generation(existing) : 0;
	if (existing != NULL) {
		/* Unchanged when the server's slice holds everything we would write. */
		cleanup_json json_object *same =
			vg_kube_resource_slice(node, node_uid, gpus, n_gpus, have);
		if (same != NULL && vg_kube_json_contains(existing, same)) {
			*generation = have;
			*result = VG_KUBE_SLICE_UNCHANGED;
			return 0;
		}
	}
	int64_t next = (have > *generation ? have : *generation) + 1;
	cleanup_json json_object *slice = vg_kube_resource_slice(node, node_uid, gpus, n_gpus, next);
	if (slice == NULL)
		return vg_error_set(err, ENOMEM, "cannot build the ResourceSlice");
	if (existing != NULL) {
		/* The resourceVersion makes a concurrent writer's change a 409, never lost. */
		json_object *version = get_path(existing, "metadata", "resourceVersion");
		if (version != NULL)
			json_object_object_add(get_path(slice, "metadata", NULL), "resourceVersion",
					       json_object_get(version));
		ret = vg_kube_call(client, "PUT", path, VG_KUBE_JSON, vg_kube_json_text(slice), NULL, err);
	} else {
		ret = vg_kube_call(client, "POST", VG_KUBE_SLICE_API, VG_KUBE_JSON, vg_kube_json_text(slice),
				   NULL, err);
		if (ret == -ENOENT) {
			if (err != NULL) {
				vg_error_free(*err);
				*err = NULL;
			}
			*result = VG_KUBE_SLICE_UNSERVED;
			return 0;
		}
	}
	if (ret < 0)
		return ret;
	*generation = next;
	*result = existing ? VG_KUBE_SLICE_UPDATED : VG_KUBE_SLICE_CREATED;
	return 0;
}

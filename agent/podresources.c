#include "agent/podresources.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "agent/deviceplugin.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/log.h"
#include "lib/process.h"
#include "method_paths.h"
#include "podresources/v1/api.pb-c.h"

/* Generous: the kubelet answers from memory, but a node under load answers slowly. */
#define PODRES_TIMEOUT_MS 10000

struct lookup {
	struct vg_grpc_loop *loop;
	const struct vg_config *config;
	const struct vg_device_table *table;
	char pod_namespace[254];
	char pod_name[254];
	bool one_pod;
	vg_pod_gpus_fn done;
	void *ctx;
};

void vg_pod_gpus_clear(struct vg_pod_gpus *gpus)
{
	free(gpus->items);
	gpus->items = NULL;
	gpus->n = 0;
}

bool vg_podresources_socket_present(const char *path)
{
	struct stat st;
	return path[0] != '\0' && stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* Whether a resource name is one we advertise: the name of a GPU of the table, or in single
 * mode the configured one (a GPU that vanished still has it). */
static bool resource_is_ours(const struct vg_config *config, const struct vg_device_table *table,
			     const char *resource)
{
	if (config->resource_naming == VG_RESOURCE_SINGLE)
		return strcmp(resource, config->resource_name) == 0;
	const struct vg_inventory *inv = table->scan.inventory;
	for (size_t i = 0; inv != NULL && i < inv->n_gpus; i++) {
		char name[VG_RESOURCE_NAME_MAX];
		vg_resource_name_of(config, &inv->gpus[i], name);
		if (strcmp(name, resource) == 0)
			return true;
	}
	return false;
}

static int add_pod_gpu(struct vg_pod_gpus *out, const char *pod, const char *resource,
		       const char *id, int pos)
{
	for (size_t i = 0; i < out->n; i++)
		if (strcmp(out->items[i].pod, pod) == 0 && strcasecmp(out->items[i].id, id) == 0)
			return 0; /* an init container's device reused by an app container */
	struct vg_pod_gpu *items = realloc(out->items, (out->n + 1) * sizeof(*items));
	if (items == NULL)
		return -ENOMEM;
	out->items = items;
	struct vg_pod_gpu *gpu = &items[out->n++];
	snprintf(gpu->id, sizeof(gpu->id), "%s", id);
	snprintf(gpu->resource, sizeof(gpu->resource), "%s", resource);
	snprintf(gpu->pod, sizeof(gpu->pod), "%s", pod);
	gpu->pos = pos;
	return 0;
}

/* The devices of our resources in one pod's containers. */
static int collect_pod(const struct lookup *lk, const V1__PodResources *pod,
		       struct vg_pod_gpus *out)
{
	if (pod == NULL || pod->name == NULL || pod->namespace_ == NULL)
		return 0;
	if (lk->one_pod && (strcmp(pod->name, lk->pod_name) != 0 ||
			    strcmp(pod->namespace_, lk->pod_namespace) != 0))
		return 0;
	char pod_id[VG_KUBELET_POD_MAX];
	snprintf(pod_id, sizeof(pod_id), "%.254s/%.254s", pod->namespace_, pod->name);
	for (size_t c = 0; c < pod->n_containers; c++) {
		const V1__ContainerResources *container = pod->containers[c];
		for (size_t d = 0; container != NULL && d < container->n_devices; d++) {
			const V1__ContainerDevices *devices = container->devices[d];
			if (devices == NULL || devices->resource_name == NULL)
				continue;
			for (size_t i = 0; i < devices->n_device_ids; i++) {
				const char *id = devices->device_ids[i];
				int pos = vg_device_table_find(lk->table, id);
				char name[VG_RESOURCE_NAME_MAX] = "";
				if (pos >= 0)
					vg_resource_name_of(lk->config,
							    &lk->table->scan.inventory->gpus[pos],
							    name);
				bool ours = pos >= 0 ? strcmp(name, devices->resource_name) == 0
						     : resource_is_ours(lk->config, lk->table,
									devices->resource_name);
				if (ours &&
				    add_pod_gpu(out, pod_id, devices->resource_name, id, pos) < 0)
					return -ENOMEM;
			}
		}
	}
	return 0;
}

static void lookup_finish(struct lookup *lk, const struct vg_pod_gpus *gpus,
			  const struct vg_error *err)
{
	lk->done(lk->ctx, gpus, err);
	free(lk);
}

/* Turns a failed reply into the error contract of vg_pod_gpus_fn. */
static void lookup_fail(struct lookup *lk, const char *method, const struct vg_grpc_reply *reply)
{
	cleanup_error struct vg_error *err = NULL;
	int code = reply->code == VG_GRPC_UNAVAILABLE	      ? ENOENT
		   : reply->code == VG_GRPC_CANCELLED	      ? ECANCELED
		   : reply->code == VG_GRPC_DEADLINE_EXCEEDED ? ETIMEDOUT
							      : EIO;
	vg_error_set(&err, code, "the kubelet's PodResources %s at %s failed (gRPC code %d): %s",
		     method, lk->config->pod_resources_socket, (int)reply->code,
		     reply->details && reply->details[0] ? reply->details : "no details");
	lookup_finish(lk, NULL, err);
}

static void on_list(void *ctx, struct vg_grpc_reply *reply)
{
	struct lookup *lk = ctx;
	if (reply->code != VG_GRPC_OK) {
		lookup_fail(lk, "List", reply);
		return;
	}
	cleanup_error struct vg_error *err = NULL;
	struct vg_pod_gpus gpus = { 0 };
	V1__ListPodResourcesResponse *resp =
		v1__list_pod_resources_response__unpack(NULL, reply->message_len, reply->message);
	if (resp == NULL)
		vg_error_set(&err, EIO, "the kubelet's PodResources List answer does not decode");
	for (size_t i = 0; resp != NULL && err == NULL && i < resp->n_pod_resources; i++)
		if (collect_pod(lk, resp->pod_resources[i], &gpus) < 0)
			vg_error_set(&err, ENOMEM, "out of memory");
	if (resp != NULL)
		v1__list_pod_resources_response__free_unpacked(resp, NULL);
	lookup_finish(lk, err ? NULL : &gpus, err);
	vg_pod_gpus_clear(&gpus);
}

static int start_list(struct lookup *lk, struct vg_error **err)
{
	V1__ListPodResourcesRequest req = V1__LIST_POD_RESOURCES_REQUEST__INIT;
	uint8_t buf[8];
	size_t len = v1__list_pod_resources_request__pack(&req, buf);
	return vg_grpc_loop_call(lk->loop, lk->config->pod_resources_socket, VG_PODRES_LIST, buf,
				 len, PODRES_TIMEOUT_MS, false, on_list, lk, err);
}

static void on_get(void *ctx, struct vg_grpc_reply *reply)
{
	struct lookup *lk = ctx;
	if (reply->code == VG_GRPC_UNAVAILABLE || reply->code == VG_GRPC_CANCELLED ||
	    reply->code == VG_GRPC_DEADLINE_EXCEEDED) {
		lookup_fail(lk, "Get", reply);
		return;
	}
	if (reply->code != VG_GRPC_OK) {
		/* Not served (UNIMPLEMENTED), gated off, or "pod ... not found": List answers all
		 * three, the last with no devices. */
		vg_debug("PodResources Get for %s/%s: code %d (%s); asking List", lk->pod_namespace,
			 lk->pod_name, (int)reply->code, reply->details ? reply->details : "");
		cleanup_error struct vg_error *err = NULL;
		if (start_list(lk, &err) < 0)
			lookup_finish(lk, NULL, err);
		return;
	}
	cleanup_error struct vg_error *err = NULL;
	struct vg_pod_gpus gpus = { 0 };
	V1__GetPodResourcesResponse *resp =
		v1__get_pod_resources_response__unpack(NULL, reply->message_len, reply->message);
	if (resp == NULL)
		vg_error_set(&err, EIO, "the kubelet's PodResources Get answer does not decode");
	else if (collect_pod(lk, resp->pod_resources, &gpus) < 0)
		vg_error_set(&err, ENOMEM, "out of memory");
	if (resp != NULL)
		v1__get_pod_resources_response__free_unpacked(resp, NULL);
	lookup_finish(lk, err ? NULL : &gpus, err);
	vg_pod_gpus_clear(&gpus);
}

static struct lookup *lookup_new(struct vg_grpc_loop *loop, const struct vg_config *config,
				 const struct vg_device_table *table, vg_pod_gpus_fn done,
				 void *ctx)
{
	struct lookup *lk = calloc(1, sizeof(*lk));
	if (lk == NULL)
		return NULL;
	lk->loop = loop;
	lk->config = config;
	lk->table = table;
	lk->done = done;
	lk->ctx = ctx;
	return lk;
}

int vg_podresources_pod_gpus(struct vg_grpc_loop *loop, const struct vg_config *config,
			     const struct vg_device_table *table, const char *pod_namespace,
			     const char *pod_name, vg_pod_gpus_fn done, void *ctx,
			     struct vg_error **err)
{
	struct lookup *lk = lookup_new(loop, config, table, done, ctx);
	if (lk == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	lk->one_pod = true;
	snprintf(lk->pod_namespace, sizeof(lk->pod_namespace), "%s", pod_namespace);
	snprintf(lk->pod_name, sizeof(lk->pod_name), "%s", pod_name);
	V1__GetPodResourcesRequest req = V1__GET_POD_RESOURCES_REQUEST__INIT;
	req.pod_name = lk->pod_name;
	req.pod_namespace = lk->pod_namespace;
	size_t len = v1__get_pod_resources_request__get_packed_size(&req);
	cleanup_free uint8_t *buf = malloc(len ? len : 1);
	if (buf == NULL) {
		free(lk);
		return vg_error_set(err, ENOMEM, "out of memory");
	}
	v1__get_pod_resources_request__pack(&req, buf);
	int ret = vg_grpc_loop_call(loop, config->pod_resources_socket, VG_PODRES_GET, buf, len,
				    PODRES_TIMEOUT_MS, false, on_get, lk, err);
	if (ret < 0)
		free(lk);
	return ret;
}

int vg_podresources_all_gpus(struct vg_grpc_loop *loop, const struct vg_config *config,
			     const struct vg_device_table *table, vg_pod_gpus_fn done, void *ctx,
			     struct vg_error **err)
{
	struct lookup *lk = lookup_new(loop, config, table, done, ctx);
	if (lk == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	int ret = start_list(lk, err);
	if (ret < 0)
		free(lk);
	return ret;
}

void vg_podresources_apply_holds(struct vg_device_table *table, const struct vg_pod_gpus *all,
				 int64_t grace_ms)
{
	const struct vg_inventory *inv = table->scan.inventory;
	int64_t now = vg_monotonic_ns();
	for (size_t pos = 0; inv != NULL && pos < inv->n_gpus; pos++) {
		const struct vg_pod_gpu *listed = NULL;
		for (size_t i = 0; i < all->n && listed == NULL; i++)
			if (all->items[i].pos == (int)pos)
				listed = &all->items[i];
		const struct vg_kubelet_hold *hold = &table->kubelet[pos];
		if (listed != NULL) {
			if (!hold->held || strcmp(hold->pod, listed->pod) != 0)
				vg_info("GPU %s: the kubelet gave it to pod %s",
					inv->gpus[pos].fn.bdf, listed->pod);
			vg_device_table_hold_for_kubelet(table, pos, listed->pod, true);
		} else if (hold->held &&
			   (hold->listed || now - hold->since_ns > grace_ms * 1000000LL)) {
			vg_info("GPU %s: the kubelet no longer assigns it to %s%s",
				inv->gpus[pos].fn.bdf, hold->pod[0] ? "pod " : "a pod", hold->pod);
			vg_device_table_drop_kubelet_hold(table, pos);
		}
	}
}

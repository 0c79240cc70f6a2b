/*
 * The v1beta1.DevicePlugin RPCs of one endpoint. The kubelet chooses the IDs: Allocate can only
 * accept them all or fail, and its answer travels to the container (or a runtime that reads it)
 * as DeviceSpecs for the VFIO nodes, PCI_RESOURCE_<RESOURCE> and VMGPU_DEVICES envs, and the
 * vmgpu.io/gpu-devices annotation.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/allocator.h"
#include "agent/api_util.h"
#include "agent/deviceplugin-priv.h"
#include "agent/device_table.h"
#include "deviceplugin/v1beta1/api.pb-c.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/log.h"
#include "method_paths.h"

/* ---- ListAndWatch ---- */

bool dp_gpu_is_healthy(const struct vg_device_table *table, int pos, const char **why)
{
	const char *unused;
	why = why ? why : &unused;
	if (pos < 0) {
		*why = "it is no longer on the node";
		return false;
	}
	const struct vg_gpu *gpu = &table->scan.inventory->gpus[pos];
	if (gpu->state != VG_GPU_AVAILABLE) {
		*why = gpu->n_reasons ? gpu->reasons[0] : vg_gpu_state_name(gpu->state);
		return false;
	}
	/* A sandbox on a GPU the kubelet gave its pod is the kubelet's own use: still Healthy. */
	if (table->owner[pos][0] != '\0' && !table->kubelet[pos].held) {
		*why = "vmgpu's own API has it in a sandbox";
		return false;
	}
	*why = NULL;
	return true;
}

static uint8_t *pack_device_list(const struct endpoint *ep, size_t *len)
{
	size_t n = ep->n_known;
	cleanup_free V1beta1__Device *devices = calloc(n ? n : 1, sizeof(*devices));
	cleanup_free V1beta1__Device **device_ptrs = calloc(n ? n : 1, sizeof(*device_ptrs));
	cleanup_free V1beta1__TopologyInfo *topology = calloc(n ? n : 1, sizeof(*topology));
	cleanup_free V1beta1__NUMANode *nodes = calloc(n ? n : 1, sizeof(*nodes));
	cleanup_free V1beta1__NUMANode **node_ptrs = calloc(n ? n : 1, sizeof(*node_ptrs));
	if (!devices || !device_ptrs || !topology || !nodes || !node_ptrs)
		return NULL;
	const struct vg_device_table *table = ep->dp->table;
	for (size_t i = 0; i < n; i++) {
		v1beta1__device__init(&devices[i]);
		devices[i].id = (char *)ep->known[i].bdf;
		int pos = vg_device_table_find(table, ep->known[i].bdf);
		devices[i].health =
			(char *)(dp_gpu_is_healthy(table, pos, NULL) ? "Healthy" : "Unhealthy");
		if (ep->known[i].numa_node >= 0) { /* -1 is "unknown", not a node */
			v1beta1__topology_info__init(&topology[i]);
			v1beta1__numanode__init(&nodes[i]);
			nodes[i].id = ep->known[i].numa_node;
			node_ptrs[i] = &nodes[i];
			topology[i].n_nodes = 1;
			topology[i].nodes = &node_ptrs[i];
			devices[i].topology = &topology[i];
		}
		device_ptrs[i] = &devices[i];
	}
	V1beta1__ListAndWatchResponse resp = V1BETA1__LIST_AND_WATCH_RESPONSE__INIT;
	resp.n_devices = n;
	resp.devices = device_ptrs;
	*len = v1beta1__list_and_watch_response__get_packed_size(&resp);
	uint8_t *buf = malloc(*len ? *len : 1);
	if (buf != NULL)
		v1beta1__list_and_watch_response__pack(&resp, buf);
	return buf;
}

void dp_endpoint_send_list(struct endpoint *ep, bool force)
{
	size_t len = 0;
	uint8_t *buf = pack_device_list(ep, &len);
	if (buf == NULL) {
		vg_err("device plugin %s: out of memory for the device list", ep->resource);
		return;
	}
	bool same = ep->list != NULL && ep->list_len == len && memcmp(ep->list, buf, len) == 0;
	free(ep->list);
	ep->list = buf;
	ep->list_len = len;
	if (same && !force)
		return;
	for (struct lw_stream *s = ep->streams; s; s = s->next)
		vg_grpc_stream_send(s->stream, ep->list, ep->list_len);
}

static void on_options(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	(void)ctx;
	V1beta1__Empty *req = v1beta1__empty__unpack(NULL, len, data);
	if (req == NULL) {
		vg_grpc_call_fail(call, VG_GRPC_INVALID_ARGUMENT, "the request is not an Empty");
		return;
	}
	v1beta1__empty__free_unpacked(req, NULL);
	V1beta1__DevicePluginOptions options = V1BETA1__DEVICE_PLUGIN_OPTIONS__INIT;
	options.pre_start_required = false;
	options.get_preferred_allocation_available = true;
	vg_reply_message(call, &options.base);
}

static void on_watch_open(void *ctx, struct vg_grpc_stream *stream, const uint8_t *data, size_t len)
{
	(void)data;
	(void)len;
	struct endpoint *ep = ctx;
	struct lw_stream *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		vg_grpc_stream_finish(stream, VG_GRPC_INTERNAL, "out of memory");
		return;
	}
	s->stream = stream;
	dp_endpoint_send_list(ep, false); /* the list is current before the newcomer gets it */
	s->next = ep->streams;
	ep->streams = s;
	if (ep->list != NULL)
		vg_grpc_stream_send(stream, ep->list, ep->list_len);
	vg_info("device plugin %s: the kubelet watches the device list", ep->resource);
}

static void on_watch_closed(void *ctx, struct vg_grpc_stream *stream)
{
	struct endpoint *ep = ctx;
	for (struct lw_stream **link = &ep->streams; *link; link = &(*link)->next) {
		if ((*link)->stream == stream) {
			struct lw_stream *s = *link;
			*link = s->next;
			free(s);
			return;
		}
	}
}

static void on_preferred(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	struct endpoint *ep = ctx;
	const struct vg_device_table *table = ep->dp->table;
	V1beta1__PreferredAllocationRequest *req =
		v1beta1__preferred_allocation_request__unpack(NULL, len, data);
	if (req == NULL) {
		vg_grpc_call_fail(call, VG_GRPC_INVALID_ARGUMENT,
				  "the request is not a PreferredAllocationRequest");
		return;
	}
	size_t n = req->n_container_requests;
	V1beta1__ContainerPreferredAllocationResponse *resps = calloc(n ? n : 1, sizeof(*resps));
	V1beta1__ContainerPreferredAllocationResponse **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
	cleanup_error struct vg_error *err = NULL;
	if (resps == NULL || ptrs == NULL)
		vg_error_set(&err, ENOMEM, "out of memory");
	for (size_t c = 0; err == NULL && c < n; c++) {
		const V1beta1__ContainerPreferredAllocationRequest *creq =
			req->container_requests[c];
		v1beta1__container_preferred_allocation_response__init(&resps[c]);
		ptrs[c] = &resps[c];
		if (creq->allocation_size < 0) {
			vg_error_set(&err, EINVAL, "allocation_size %d is negative",
				     creq->allocation_size);
			break;
		}
		size_t size = (size_t)creq->allocation_size, n_chosen = 0;
		size_t *chosen = calloc(size ? size : 1, sizeof(*chosen));
		resps[c].deviceids = calloc(size ? size : 1, sizeof(char *));
		if (chosen == NULL || resps[c].deviceids == NULL) {
			free(chosen);
			vg_error_set(&err, ENOMEM, "out of memory");
			break;
		}
		if (vg_prefer_allocation(table->view, table->scan.inventory->n_gpus,
					 (const char *const *)creq->available_deviceids,
					 creq->n_available_deviceids,
					 (const char *const *)creq->must_include_deviceids,
					 creq->n_must_include_deviceids, size, chosen, &n_chosen,
					 &err) == 0) {
			for (size_t i = 0; i < n_chosen; i++)
				resps[c].deviceids[i] = (char *)table->view[chosen[i]].bdf;
			resps[c].n_deviceids = n_chosen;
		}
		free(chosen);
	}
	if (err == NULL) {
		V1beta1__PreferredAllocationResponse resp =
			V1BETA1__PREFERRED_ALLOCATION_RESPONSE__INIT;
		resp.n_container_responses = n;
		resp.container_responses = ptrs;
		vg_reply_message(call, &resp.base);
	} else {
		vg_error_prefix(&err, "GetPreferredAllocation for %s", ep->resource);
		vg_warn("device plugin: %s", err->msg);
		vg_grpc_call_fail_error(call, err);
	}
	for (size_t c = 0; resps != NULL && c < n; c++)
		free(resps[c].deviceids);
	free(resps);
	free(ptrs);
	v1beta1__preferred_allocation_request__free_unpacked(req, NULL);
}

/* ---- Allocate ---- */

/* The DeviceSpecs of one container, their strings owned here. */
struct spec_list {
	V1beta1__DeviceSpec *specs;
	V1beta1__DeviceSpec **ptrs;
	size_t n, cap;
};

static int spec_add(struct spec_list *list, const char *container_path, const char *host_path)
{
	for (size_t i = 0; i < list->n; i++)
		if (strcmp(list->specs[i].container_path, container_path) == 0)
			return 0;
	if (list->n == list->cap) {
		size_t cap = list->cap ? list->cap * 2 : 8;
		V1beta1__DeviceSpec *specs = realloc(list->specs, cap * sizeof(*specs));
		if (specs == NULL)
			return -ENOMEM;
		list->specs = specs;
		list->cap = cap;
	}
	V1beta1__DeviceSpec *spec = &list->specs[list->n];
	v1beta1__device_spec__init(spec);
	spec->container_path = strdup(container_path);
	spec->host_path = strdup(host_path);
	spec->permissions = (char *)"rw";
	if (spec->container_path == NULL || spec->host_path == NULL) {
		free(spec->container_path);
		free(spec->host_path);
		return -ENOMEM;
	}
	list->n++;
	return 0;
}

static void spec_list_clear(struct spec_list *list)
{
	for (size_t i = 0; i < list->n; i++) {
		free(list->specs[i].container_path);
		free(list->specs[i].host_path);
	}
	free(list->specs);
	free(list->ptrs);
	memset(list, 0, sizeof(*list));
}

static bool node_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* The IOMMU group of a PCI function from sysfs, -1 when it has none. */
static int group_of(const char *sysfs_root, const char *bdf)
{
	char link[PATH_MAX + 64], target[PATH_MAX];
	snprintf(link, sizeof(link), "%s/bus/pci/devices/%s/iommu_group", sysfs_root, bdf);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	if (n <= 0)
		return -1;
	target[n] = '\0';
	const char *base = strrchr(target, '/');
	return atoi(base ? base + 1 : target);
}

/* With iommufd a bound function also has a character device, /dev/vfio/devices/vfioN, named in
 * sysfs under vfio-dev/. */
static int add_vfio_cdevs(const struct vg_config *config, const char *bdf, struct spec_list *list)
{
	char dir_path[PATH_MAX + 64];
	snprintf(dir_path, sizeof(dir_path), "%s/bus/pci/devices/%s/vfio-dev", config->sysfs_root,
		 bdf);
	cleanup_dir DIR *dir = opendir(dir_path);
	for (struct dirent *de; dir != NULL && (de = readdir(dir)) != NULL;) {
		if (strncmp(de->d_name, "vfio", 4) != 0)
			continue;
		char host[PATH_MAX + 300], in_container[300];
		snprintf(host, sizeof(host), "%s/vfio/devices/%s", config->dev_root, de->d_name);
		snprintf(in_container, sizeof(in_container), "/dev/vfio/devices/%s", de->d_name);
		if (node_exists(host) && spec_add(list, in_container, host) < 0)
			return -ENOMEM;
	}
	return 0;
}

static int add_group(const struct vg_config *config, int group, struct spec_list *list)
{
	if (group < 0)
		return 0;
	char host[PATH_MAX + 32], in_container[32];
	snprintf(host, sizeof(host), "%s/vfio/%d", config->dev_root, group);
	snprintf(in_container, sizeof(in_container), "/dev/vfio/%d", group);
	return spec_add(list, in_container, host);
}

static int build_specs(const struct vg_device_plugin *dp, const int *pos, size_t n,
		       struct spec_list *list)
{
	const struct vg_config *config = dp->config;
	char host[PATH_MAX + 32];
	snprintf(host, sizeof(host), "%s/vfio/vfio", config->dev_root);
	if (spec_add(list, "/dev/vfio/vfio", host) < 0)
		return -ENOMEM;
	snprintf(host, sizeof(host), "%s/iommu", config->dev_root);
	bool iommufd = node_exists(host);
	if (iommufd && spec_add(list, "/dev/iommu", host) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct vg_gpu *gpu = &dp->table->scan.inventory->gpus[pos[i]];
		if (add_group(config, gpu->group.number, list) < 0 ||
		    (iommufd && add_vfio_cdevs(config, gpu->fn.bdf, list) < 0))
			return -ENOMEM;
		/* Companions travel with their GPU, and ACS may have put one in a group of its own.
		 */
		for (size_t c = 0; c < gpu->n_companions; c++) {
			const char *bdf = gpu->companions[c].bdf;
			if (add_group(config, group_of(config->sysfs_root, bdf), list) < 0 ||
			    (iommufd && add_vfio_cdevs(config, bdf, list) < 0))
				return -ENOMEM;
		}
	}
	list->ptrs = calloc(list->n ? list->n : 1, sizeof(*list->ptrs));
	if (list->ptrs == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < list->n; i++)
		list->ptrs[i] = &list->specs[i];
	return 0;
}

/* Every ID must be a GPU of this resource that the kubelet may use, each named once. */
static int check_ids(const struct endpoint *ep, char **ids, size_t n, int *pos,
		     struct vg_error **err)
{
	const struct vg_device_table *table = ep->dp->table;
	for (size_t i = 0; i < n; i++) {
		pos[i] = vg_device_table_find(table, ids[i]);
		const char *why = NULL;
		if (pos[i] < 0)
			return vg_error_set(err, ENOENT, "device %s is not a GPU of this node",
					    ids[i]);
		char resource[VG_RESOURCE_NAME_MAX];
		vg_resource_name_of(ep->dp->config, &table->scan.inventory->gpus[pos[i]], resource);
		if (strcmp(resource, ep->resource) != 0)
			return vg_error_set(err, EINVAL, "device %s is advertised as %s, not %s",
					    ids[i], resource, ep->resource);
		if (!dp_gpu_is_healthy(table, pos[i], &why))
			return vg_error_set(err, EBUSY, "device %s is unhealthy: %s", ids[i], why);
		for (size_t j = 0; j < i; j++)
			if (pos[j] == pos[i])
				return vg_error_set(err, EINVAL, "device %s is listed twice",
						    ids[i]);
	}
	return 0;
}

struct container_reply {
	V1beta1__ContainerAllocateResponse msg;
	V1beta1__ContainerAllocateResponse__EnvsEntry envs[2];
	V1beta1__ContainerAllocateResponse__EnvsEntry *env_ptrs[2];
	V1beta1__ContainerAllocateResponse__AnnotationsEntry annotation;
	V1beta1__ContainerAllocateResponse__AnnotationsEntry *annotation_ptrs[1];
	struct spec_list specs;
	char *bdfs; /* "0000:1b:00.0,0000:43:00.0" */
};

static int build_container(const struct endpoint *ep, const char *env_key, const int *pos, size_t n,
			   struct container_reply *out)
{
	v1beta1__container_allocate_response__init(&out->msg);
	out->bdfs = calloc(n ? n : 1, VG_BDF_STRLEN);
	if (out->bdfs == NULL || build_specs(ep->dp, pos, n, &out->specs) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			strcat(out->bdfs, ",");
		strcat(out->bdfs, ep->dp->table->scan.inventory->gpus[pos[i]].fn.bdf);
	}
	const char *keys[2] = { env_key, "VMGPU_DEVICES" };
	for (int i = 0; i < 2; i++) {
		v1beta1__container_allocate_response__envs_entry__init(&out->envs[i]);
		out->envs[i].key = (char *)keys[i];
		out->envs[i].value = out->bdfs;
		out->env_ptrs[i] = &out->envs[i];
	}
	v1beta1__container_allocate_response__annotations_entry__init(&out->annotation);
	out->annotation.key = (char *)"vmgpu.io/gpu-devices";
	out->annotation.value = out->bdfs;
	out->annotation_ptrs[0] = &out->annotation;
	out->msg.n_envs = 2;
	out->msg.envs = out->env_ptrs;
	out->msg.n_annotations = 1;
	out->msg.annotations = out->annotation_ptrs;
	out->msg.n_devices = out->specs.n;
	out->msg.devices = out->specs.ptrs;
	return 0;
}

static void on_allocate(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	struct endpoint *ep = ctx;
	struct vg_device_plugin *dp = ep->dp;
	V1beta1__AllocateRequest *req = v1beta1__allocate_request__unpack(NULL, len, data);
	if (req == NULL) {
		vg_grpc_call_fail(call, VG_GRPC_INVALID_ARGUMENT,
				  "the request is not an AllocateRequest");
		return;
	}
	size_t n = req->n_container_requests, total = 0;
	for (size_t c = 0; c < n; c++)
		total += req->container_requests[c]->n_devices_ids;
	cleanup_free int *pos = calloc(total ? total : 1, sizeof(*pos));
	cleanup_free struct container_reply *replies = calloc(n ? n : 1, sizeof(*replies));
	cleanup_free V1beta1__ContainerAllocateResponse **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
	cleanup_error struct vg_error *err = NULL;
	if (pos == NULL || replies == NULL || ptrs == NULL)
		vg_error_set(&err, ENOMEM, "out of memory");
	/* All or nothing: every container's IDs are checked before anything is marked. */
	for (size_t c = 0, at = 0; err == NULL && c < n;
	     at += req->container_requests[c++]->n_devices_ids)
		check_ids(ep, req->container_requests[c]->devices_ids,
			  req->container_requests[c]->n_devices_ids, pos + at, &err);
	if (err != NULL) {
		vg_error_prefix(&err, "Allocate for %s", ep->resource);
		vg_warn("device plugin: %s", err->msg);
		dp_endpoint_send_list(ep, true); /* as the API asks: the kubelet learns the truth */
		vg_grpc_call_fail_error(call, err);
		v1beta1__allocate_request__free_unpacked(req, NULL);
		return;
	}
	/* KubeVirt's convention: nvidia.com/gpu -> PCI_RESOURCE_NVIDIA_COM_GPU. */
	char env_key[VG_RESOURCE_NAME_MAX + 16];
	int key_len = snprintf(env_key, sizeof(env_key), "PCI_RESOURCE_%s", ep->resource);
	for (int i = 13; i < key_len; i++)
		env_key[i] = isalnum((unsigned char)env_key[i])
				     ? (char)toupper((unsigned char)env_key[i])
				     : '_';
	int ret = 0;
	for (size_t c = 0, at = 0; ret == 0 && c < n;
	     at += req->container_requests[c++]->n_devices_ids) {
		ret = build_container(ep, env_key, pos + at,
				      req->container_requests[c]->n_devices_ids, &replies[c]);
		ptrs[c] = &replies[c].msg;
	}
	if (ret < 0) {
		vg_grpc_call_fail(call, VG_GRPC_INTERNAL, "out of memory");
	} else {
		for (size_t i = 0; i < total; i++)
			vg_device_table_hold_for_kubelet(dp->table, (size_t)pos[i], NULL, false);
		for (size_t c = 0; c < n; c++)
			vg_info("device plugin %s: the kubelet allocated %s", ep->resource,
				replies[c].bdfs[0] ? replies[c].bdfs : "nothing");
		V1beta1__AllocateResponse resp = V1BETA1__ALLOCATE_RESPONSE__INIT;
		resp.n_container_responses = n;
		resp.container_responses = ptrs;
		vg_reply_message(call, &resp.base);
		dp->changed(dp->changed_ctx);
	}
	for (size_t c = 0; c < n; c++) {
		spec_list_clear(&replies[c].specs);
		free(replies[c].bdfs);
	}
	v1beta1__allocate_request__free_unpacked(req, NULL);
}

static void on_pre_start(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	(void)ctx;
	V1beta1__PreStartContainerRequest *req =
		v1beta1__pre_start_container_request__unpack(NULL, len, data);
	if (req == NULL) {
		vg_grpc_call_fail(call, VG_GRPC_INVALID_ARGUMENT,
				  "the request is not a PreStartContainerRequest");
		return;
	}
	v1beta1__pre_start_container_request__free_unpacked(req, NULL);
	/* pre_start_required is false: nothing to prepare, the shim resets GPUs itself. */
	V1beta1__PreStartContainerResponse resp = V1BETA1__PRE_START_CONTAINER_RESPONSE__INIT;
	vg_reply_message(call, &resp.base);
}

int dp_register_methods(struct endpoint *ep, struct vg_grpc_server *server, struct vg_error **err)
{
	int ret = vg_grpc_server_add_unary(server, VG_DP_GET_DEVICE_PLUGIN_OPTIONS, on_options, ep,
					   err);
	if (ret == 0)
		ret = vg_grpc_server_add_stream(server, VG_DP_LIST_AND_WATCH, on_watch_open,
						on_watch_closed, ep, err);
	if (ret == 0)
		ret = vg_grpc_server_add_unary(server, VG_DP_GET_PREFERRED_ALLOCATION, on_preferred,
					       ep, err);
	if (ret == 0)
		ret = vg_grpc_server_add_unary(server, VG_DP_ALLOCATE, on_allocate, ep, err);
	if (ret == 0)
		ret = vg_grpc_server_add_unary(server, VG_DP_PRE_START_CONTAINER, on_pre_start, ep,
					       err);
	return ret;
}

#include "agent/inventory_service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/api_util.h"
#include "agent/device_table.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/node_scan.h"
#include "method_paths.h"
#include "vmgpu/v1/inventory.pb-c.h"

struct watcher {
	struct vg_grpc_stream *stream;
	struct watcher *next;
};

struct vg_inventory_service {
	struct vg_device_table *table;
	struct watcher *watchers;
	uint64_t published_generation;
};

/* One GpuDevice and everything it points at, freed together after packing. */
struct gpu_msg {
	Vmgpu__V1__GpuDevice msg;
	Vmgpu__V1__PciFunction companions[16];
	Vmgpu__V1__PciFunction *companion_ptrs[16];
	char ids[16][4][12]; /* vendor, device, class per companion */
	char vendor[8], device[8], subsys_vendor[8], subsys_device[8];
	char numa[12], group[12];
	json_object *attributes;
	struct vg_map attribute_map;
};

static void fill_gpu(const struct vg_device_table *table, size_t pos, struct gpu_msg *m)
{
	const struct vg_gpu *gpu = &table->scan.inventory->gpus[pos];
	vmgpu__v1__gpu_device__init(&m->msg);
	snprintf(m->vendor, sizeof(m->vendor), "0x%04x", gpu->fn.vendor_id);
	snprintf(m->device, sizeof(m->device), "0x%04x", gpu->fn.device_id);
	snprintf(m->subsys_vendor, sizeof(m->subsys_vendor), "0x%04x", gpu->subsys_vendor_id);
	snprintf(m->subsys_device, sizeof(m->subsys_device), "0x%04x", gpu->subsys_device_id);
	m->msg.id = (char *)gpu->fn.bdf;
	m->msg.bdf = (char *)gpu->fn.bdf;
	m->msg.index = gpu->index;
	m->msg.name = (char *)gpu->name;
	m->msg.vendor_id = m->vendor;
	m->msg.device_id = m->device;
	m->msg.subsystem_vendor_id = m->subsys_vendor;
	m->msg.subsystem_device_id = m->subsys_device;
	m->msg.numa_node = gpu->numa_node;
	m->msg.iommu_group = gpu->group.number;
	m->msg.driver = (char *)gpu->fn.driver;
	m->msg.state = (char *)vg_device_table_state(table, pos);
	m->msg.reason = gpu->n_reasons ? gpu->reasons[0] : (char *)"";
	m->msg.n_reasons = gpu->n_reasons;
	m->msg.reasons = (char **)gpu->reasons;
	m->msg.sandbox_id = (char *)table->owner[pos];
	m->msg.pcie_root = (char *)gpu->pcie_root;
	size_t n = gpu->n_companions < 16 ? gpu->n_companions : 16;
	for (size_t i = 0; i < n; i++) {
		const struct vg_pci_function *fn = &gpu->companions[i];
		Vmgpu__V1__PciFunction *c = &m->companions[i];
		vmgpu__v1__pci_function__init(c);
		snprintf(m->ids[i][0], 12, "0x%04x", fn->vendor_id);
		snprintf(m->ids[i][1], 12, "0x%04x", fn->device_id);
		snprintf(m->ids[i][2], 12, "0x%06x", fn->class_code);
		c->bdf = (char *)fn->bdf;
		c->vendor_id = m->ids[i][0];
		c->device_id = m->ids[i][1];
		c->class_code = m->ids[i][2];
		c->driver = (char *)fn->driver;
		m->companion_ptrs[i] = c;
	}
	m->msg.n_companions = n;
	m->msg.companions = m->companion_ptrs;
	/* The attributes a selector matches on, under the selector's own key names. */
	snprintf(m->numa, sizeof(m->numa), "%d", gpu->numa_node);
	m->attributes = json_object_new_object();
	json_object_object_add(m->attributes, "product", json_object_new_string(gpu->name));
	json_object_object_add(m->attributes, "vendor", json_object_new_string(m->vendor + 2));
	json_object_object_add(m->attributes, "device", json_object_new_string(m->device + 2));
	json_object_object_add(m->attributes, "numa", json_object_new_string(m->numa));
	json_object_object_add(m->attributes, "pcie-root", json_object_new_string(gpu->pcie_root));
	static const Vmgpu__V1__GpuDevice__AttributesEntry init =
		VMGPU__V1__GPU_DEVICE__ATTRIBUTES_ENTRY__INIT;
	vg_map_from_json(m->attributes, &init, &m->attribute_map);
	m->msg.n_attributes = m->attribute_map.n;
	m->msg.attributes = (Vmgpu__V1__GpuDevice__AttributesEntry **)m->attribute_map.entries;
}

struct device_list {
	struct gpu_msg *gpus;
	Vmgpu__V1__GpuDevice **ptrs;
	size_t n;
};

static int build_devices(const struct vg_device_table *table, const char *state_filter,
			 struct device_list *list)
{
	size_t total = table->scan.inventory->n_gpus;
	list->gpus = calloc(total ? total : 1, sizeof(*list->gpus));
	list->ptrs = calloc(total ? total : 1, sizeof(*list->ptrs));
	list->n = 0;
	if (list->gpus == NULL || list->ptrs == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < total; i++) {
		if (state_filter && state_filter[0] &&
		    strcmp(state_filter, vg_device_table_state(table, i)) != 0)
			continue;
		fill_gpu(table, i, &list->gpus[list->n]);
		list->ptrs[list->n] = &list->gpus[list->n].msg;
		list->n++;
	}
	return 0;
}

static void free_devices(struct device_list *list)
{
	for (size_t i = 0; list->gpus && i < list->n; i++) {
		vg_map_clear(&list->gpus[i].attribute_map);
		json_object_put(list->gpus[i].attributes);
	}
	free(list->gpus);
	free(list->ptrs);
}

static uint8_t *pack_snapshot(const struct vg_device_table *table, const char *state_filter,
			      size_t *len)
{
	struct device_list list;
	uint8_t *buf = NULL;
	if (build_devices(table, state_filter, &list) == 0) {
		Vmgpu__V1__ListDevicesResponse resp = VMGPU__V1__LIST_DEVICES_RESPONSE__INIT;
		resp.n_devices = list.n;
		resp.devices = list.ptrs;
		resp.generation = table->generation;
		*len = vmgpu__v1__list_devices_response__get_packed_size(&resp);
		buf = malloc(*len ? *len : 1);
		if (buf)
			vmgpu__v1__list_devices_response__pack(&resp, buf);
	}
	free_devices(&list);
	return buf;
}

static void on_list_devices(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	struct vg_inventory_service *service = ctx;
	Vmgpu__V1__ListDevicesRequest *req = vmgpu__v1__list_devices_request__unpack(NULL, len, data);
	if (req == NULL) {
		vg_grpc_call_fail(call, VG_GRPC_INVALID_ARGUMENT, "not a ListDevicesRequest");
		return;
	}
	static const char *const states[] = { "", "available", "allocated", "unhealthy",
					      "unsupported" };
	bool known = false;
	for (size_t i = 0; i < VG_ARRAY_SIZE(states); i++)
		known |= strcmp(req->state, states[i]) == 0;
	if (!known) {
		vg_grpc_call_fail(call, VG_GRPC_INVALID_ARGUMENT,
				  "state filter must be one of: available, allocated, unhealthy, "
				  "unsupported");
	} else {
		size_t out_len = 0;
		cleanup_free uint8_t *buf = pack_snapshot(service->table, req->state, &out_len);
		if (buf)
			vg_grpc_call_reply(call, buf, out_len);
		else
			vg_grpc_call_fail(call, VG_GRPC_INTERNAL, "out of memory");
	}
	vmgpu__v1__list_devices_request__free_unpacked(req, NULL);
}

static void on_capabilities(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	struct vg_inventory_service *service = ctx;
	const struct vg_node_scan *scan = &service->table->scan;
	(void)data;
	(void)len;
	struct device_list list;
	if (build_devices(service->table, NULL, &list) < 0) {
		free_devices(&list);
		vg_grpc_call_fail(call, VG_GRPC_INTERNAL, "out of memory");
		return;
	}
	Vmgpu__V1__HostCheck checks[VG_HOST_MAX_CHECKS];
	Vmgpu__V1__HostCheck *check_ptrs[VG_HOST_MAX_CHECKS];
	for (size_t i = 0; i < scan->host.n_checks; i++) {
		vmgpu__v1__host_check__init(&checks[i]);
		checks[i].name = (char *)scan->host.checks[i].name;
		checks[i].status = (char *)vg_check_status_name(scan->host.checks[i].status);
		checks[i].detail = (char *)scan->host.checks[i].detail;
		check_ptrs[i] = &checks[i];
	}
	Vmgpu__V1__GetCapabilitiesResponse resp = VMGPU__V1__GET_CAPABILITIES_RESPONSE__INIT;
	resp.node = (char *)scan->host.hostname;
	resp.architecture = (char *)scan->host.arch;
	resp.kernel = (char *)scan->host.kernel_release;
	resp.qemu_binary = (char *)scan->host.qemu_path;
	resp.qemu_version = (char *)scan->host.qemu_version;
	resp.agent_version = (char *)VMGPU_VERSION;
	resp.n_devices = list.n;
	resp.devices = list.ptrs;
	resp.n_checks = scan->host.n_checks;
	resp.checks = check_ptrs;
	resp.passthrough_ready = vg_node_scan_ready(scan);
	vg_reply_message(call, &resp.base);
	free_devices(&list);
}

static void send_snapshot(struct vg_inventory_service *service, struct vg_grpc_stream *stream)
{
	size_t len = 0;
	cleanup_free uint8_t *buf = pack_snapshot(service->table, NULL, &len);
	if (buf)
		vg_grpc_stream_send(stream, buf, len);
}

static void on_watch_open(void *ctx, struct vg_grpc_stream *stream, const uint8_t *data,
			  size_t len)
{
	(void)data;
	(void)len;
	struct vg_inventory_service *service = ctx;
	struct watcher *w = calloc(1, sizeof(*w));
	if (w == NULL) {
		vg_grpc_stream_finish(stream, VG_GRPC_INTERNAL, "out of memory");
		return;
	}
	w->stream = stream;
	w->next = service->watchers;
	service->watchers = w;
	send_snapshot(service, stream);
}

static void on_watch_closed(void *ctx, struct vg_grpc_stream *stream)
{
	struct vg_inventory_service *service = ctx;
	for (struct watcher **link = &service->watchers; *link; link = &(*link)->next) {
		if ((*link)->stream == stream) {
			struct watcher *w = *link;
			*link = w->next;
			free(w);
			return;
		}
	}
}

void vg_inventory_service_publish(struct vg_inventory_service *service)
{
	if (service == NULL || service->published_generation == service->table->generation)
		return;
	service->published_generation = service->table->generation;
	for (struct watcher *w = service->watchers; w; w = w->next)
		send_snapshot(service, w->stream);
}

int vg_inventory_service_register(struct vg_grpc_server *server, struct vg_device_table *table,
				  struct vg_inventory_service **out, struct vg_error **err)
{
	struct vg_inventory_service *service = calloc(1, sizeof(*service));
	if (service == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	service->table = table;
	service->published_generation = table->generation;
	int ret = vg_grpc_server_add_unary(server, VG_INVENTORY_GET_CAPABILITIES, on_capabilities,
					   service, err);
	if (ret == 0)
		ret = vg_grpc_server_add_unary(server, VG_INVENTORY_LIST_DEVICES, on_list_devices,
					       service, err);
	if (ret == 0)
		ret = vg_grpc_server_add_stream(server, VG_INVENTORY_WATCH_DEVICES, on_watch_open,
						on_watch_closed, service, err);
	if (ret < 0) {
		free(service);
		return ret;
	}
	*out = service;
	return 0;
}

void vg_inventory_service_free(struct vg_inventory_service *service)
{
	if (service == NULL)
		return;
	while (service->watchers) {
		struct watcher *w = service->watchers;
		service->watchers = w->next;
		free(w);
	}
	free(service);
}

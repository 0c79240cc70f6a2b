/*
 * Test helper for tests/integration/test_protos.py: proves that the protobuf-c code built from
 * api/ (vmgpu_proto) and the Python modules built from the same .proto files agree on the wire.
 *
 *   proto_roundtrip TYPE < in.bin > out.bin   unpack TYPE (full proto name, e.g.
 *                                             "runtime.v1.RunPodSandboxRequest") with protobuf-c,
 *                                             pack it again; for a few types also print typed
 *                                             fields as "key=value" lines on stderr
 *   proto_roundtrip --types                   the TYPE names it knows, one per line
 *   proto_roundtrip --paths                   every method path of api/method_paths.h
 *
 * Exit status: 0 ok, 2 usage or unknown type, 3 unpack failed, 4 I/O error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deviceplugin/v1beta1/api.pb-c.h"
#include "method_paths.h"
#include "podresources/v1/api.pb-c.h"
#include "runtime/v1/api.pb-c.h"
#include "vmgpu/v1/inventory.pb-c.h"

static const ProtobufCMessageDescriptor *const descriptors[] = {
	/* runtime.v1 */
	&runtime__v1__version_request__descriptor,
	&runtime__v1__version_response__descriptor,
	&runtime__v1__run_pod_sandbox_request__descriptor,
	&runtime__v1__run_pod_sandbox_response__descriptor,
	&runtime__v1__stop_pod_sandbox_request__descriptor,
	&runtime__v1__stop_pod_sandbox_response__descriptor,
	&runtime__v1__remove_pod_sandbox_request__descriptor,
	&runtime__v1__remove_pod_sandbox_response__descriptor,
	&runtime__v1__pod_sandbox_status_request__descriptor,
	&runtime__v1__pod_sandbox_status_response__descriptor,
	&runtime__v1__list_pod_sandbox_request__descriptor,
	&runtime__v1__list_pod_sandbox_response__descriptor,
	&runtime__v1__status_request__descriptor,
	&runtime__v1__status_response__descriptor,
	&runtime__v1__pod_sandbox_config__descriptor,
	/* vmgpu.v1 */
	&vmgpu__v1__get_capabilities_request__descriptor,
	&vmgpu__v1__get_capabilities_response__descriptor,
	&vmgpu__v1__list_devices_request__descriptor,
	&vmgpu__v1__list_devices_response__descriptor,
	&vmgpu__v1__watch_devices_request__descriptor,
	&vmgpu__v1__gpu_device__descriptor,
	/* v1beta1 */
	&v1beta1__register_request__descriptor,
	&v1beta1__empty__descriptor,
	&v1beta1__device_plugin_options__descriptor,
	&v1beta1__list_and_watch_response__descriptor,
	&v1beta1__preferred_allocation_request__descriptor,
	&v1beta1__preferred_allocation_response__descriptor,
	&v1beta1__allocate_request__descriptor,
	&v1beta1__allocate_response__descriptor,
	&v1beta1__pre_start_container_request__descriptor,
	&v1beta1__pre_start_container_response__descriptor,
	/* v1 (podresources) */
	&v1__list_pod_resources_request__descriptor,
	&v1__list_pod_resources_response__descriptor,
	&v1__allocatable_resources_request__descriptor,
	&v1__allocatable_resources_response__descriptor,
	&v1__get_pod_resources_request__descriptor,
	&v1__get_pod_resources_response__descriptor,
};

static const char *const method_paths[] = {
	VG_CRI_VERSION,
	VG_CRI_RUN_POD_SANDBOX,
	VG_CRI_STOP_POD_SANDBOX,
	VG_CRI_REMOVE_POD_SANDBOX,
	VG_CRI_POD_SANDBOX_STATUS,
	VG_CRI_LIST_POD_SANDBOX,
	VG_CRI_STATUS,
	VG_INVENTORY_GET_CAPABILITIES,
	VG_INVENTORY_LIST_DEVICES,
	VG_INVENTORY_WATCH_DEVICES,
	VG_DP_REGISTER,
	VG_DP_GET_DEVICE_PLUGIN_OPTIONS,
	VG_DP_LIST_AND_WATCH,
	VG_DP_GET_PREFERRED_ALLOCATION,
	VG_DP_ALLOCATE,
	VG_DP_PRE_START_CONTAINER,
	VG_PODRES_LIST,
	VG_PODRES_GET_ALLOCATABLE_RESOURCES,
	VG_PODRES_GET,
};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static const ProtobufCMessageDescriptor *find_descriptor(const char *name)
{
	for (size_t i = 0; i < N_ELEMS(descriptors); i++)
		if (strcmp(descriptors[i]->name, name) == 0)
			return descriptors[i];
	return NULL;
}

static uint8_t *read_all(FILE *f, size_t *len)
{
	size_t cap = 4096, n = 0;
	uint8_t *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap)
			break;
		cap *= 2;
		uint8_t *grown = realloc(buf, cap);
		if (!grown)
			free(buf);
		buf = grown;
	}
	if (!buf || ferror(f)) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

/* Typed views: these exercise the generated C names the agent code will use. */

static void summarize_run_pod_sandbox(const Runtime__V1__RunPodSandboxRequest *req)
{
	const Runtime__V1__PodSandboxConfig *cfg = req->config;
	fprintf(stderr, "runtime_handler=%s\n", req->runtime_handler);
	if (!cfg)
		return;
	if (cfg->metadata)
		fprintf(stderr, "metadata=%s/%s/%s/%u\n", cfg->metadata->namespace_,
			cfg->metadata->name, cfg->metadata->uid, cfg->metadata->attempt);
	fprintf(stderr, "hostname=%s\n", cfg->hostname);
	for (size_t i = 0; i < cfg->n_annotations; i++)
		fprintf(stderr, "annotation.%s=%s\n", cfg->annotations[i]->key,
			cfg->annotations[i]->value);
	for (size_t i = 0; i < cfg->n_labels; i++)
		fprintf(stderr, "label.%s=%s\n", cfg->labels[i]->key, cfg->labels[i]->value);
	for (size_t i = 0; i < cfg->n_port_mappings; i++)
		fprintf(stderr, "port.%zu=%d:%d:%d:%s\n", i, (int)cfg->port_mappings[i]->protocol,
			cfg->port_mappings[i]->container_port, cfg->port_mappings[i]->host_port,
			cfg->port_mappings[i]->host_ip);
	if (cfg->dns_config)
		for (size_t i = 0; i < cfg->dns_config->n_servers; i++)
			fprintf(stderr, "dns.server.%zu=%s\n", i, cfg->dns_config->servers[i]);
	const Runtime__V1__LinuxPodSandboxConfig *lx = cfg->linux_;
	if (!lx)
		return;
	fprintf(stderr, "cgroup_parent=%s\n", lx->cgroup_parent);
	if (lx->security_context && lx->security_context->namespace_options)
		fprintf(stderr, "network_mode=%d\n",
			(int)lx->security_context->namespace_options->network);
	for (size_t i = 0; i < lx->n_sysctls; i++)
		fprintf(stderr, "sysctl.%s=%s\n", lx->sysctls[i]->key, lx->sysctls[i]->value);
	const Runtime__V1__LinuxContainerResources *r = lx->resources;
	if (!r)
		return;
	fprintf(stderr, "cpu=%lld/%lld/%lld\n", (long long)r->cpu_period, (long long)r->cpu_quota,
		(long long)r->cpu_shares);
	fprintf(stderr, "memory_limit_in_bytes=%lld\n", (long long)r->memory_limit_in_bytes);
	fprintf(stderr, "cpuset_cpus=%s\n", r->cpuset_cpus);
	for (size_t i = 0; i < r->n_hugepage_limits; i++)
		fprintf(stderr, "hugepages.%s=%llu\n", r->hugepage_limits[i]->page_size,
			(unsigned long long)r->hugepage_limits[i]->limit);
	for (size_t i = 0; i < r->n_unified; i++)
		fprintf(stderr, "unified.%s=%s\n", r->unified[i]->key, r->unified[i]->value);
}

static void summarize_gpu_device(const Vmgpu__V1__GpuDevice *d)
{
	fprintf(stderr, "id=%s\nbdf=%s\nindex=%d\nnuma_node=%d\niommu_group=%d\nstate=%s\n", d->id,
		d->bdf, d->index, d->numa_node, d->iommu_group, d->state);
	for (size_t i = 0; i < d->n_companions; i++)
		fprintf(stderr, "companion.%zu=%s,%s:%s,%s,%s\n", i, d->companions[i]->bdf,
			d->companions[i]->vendor_id, d->companions[i]->device_id,
			d->companions[i]->class_code, d->companions[i]->driver);
	for (size_t i = 0; i < d->n_attributes; i++)
		fprintf(stderr, "attribute.%s=%s\n", d->attributes[i]->key, d->attributes[i]->value);
	for (size_t i = 0; i < d->n_reasons; i++)
		fprintf(stderr, "reason.%zu=%s\n", i, d->reasons[i]);
}

static void summarize_allocate_response(const V1beta1__AllocateResponse *resp)
{
	for (size_t c = 0; c < resp->n_container_responses; c++) {
		const V1beta1__ContainerAllocateResponse *cr = resp->container_responses[c];
		for (size_t i = 0; i < cr->n_envs; i++)
			fprintf(stderr, "%zu.env.%s=%s\n", c, cr->envs[i]->key, cr->envs[i]->value);
		for (size_t i = 0; i < cr->n_annotations; i++)
			fprintf(stderr, "%zu.annotation.%s=%s\n", c, cr->annotations[i]->key,
				cr->annotations[i]->value);
		for (size_t i = 0; i < cr->n_devices; i++)
			fprintf(stderr, "%zu.device.%zu=%s:%s:%s\n", c, i, cr->devices[i]->host_path,
				cr->devices[i]->container_path, cr->devices[i]->permissions);
		for (size_t i = 0; i < cr->n_mounts; i++)
			fprintf(stderr, "%zu.mount.%zu=%s:%s:%d\n", c, i, cr->mounts[i]->host_path,
				cr->mounts[i]->container_path, (int)cr->mounts[i]->read_only);
		for (size_t i = 0; i < cr->n_cdi_devices; i++)
			fprintf(stderr, "%zu.cdi.%zu=%s\n", c, i, cr->cdi_devices[i]->name);
	}
}

static void summarize_list_and_watch(const V1beta1__ListAndWatchResponse *resp)
{
	for (size_t i = 0; i < resp->n_devices; i++) {
		const V1beta1__Device *d = resp->devices[i];
		fprintf(stderr, "device.%s=%s", d->id, d->health);
		if (d->topology)
			for (size_t n = 0; n < d->topology->n_nodes; n++)
				fprintf(stderr, ",numa%lld", (long long)d->topology->nodes[n]->id);
		fputc('\n', stderr);
	}
}

static void summarize_pod_resources(const V1__GetPodResourcesResponse *resp)
{
	const V1__PodResources *pr = resp->pod_resources;
	if (!pr)
		return;
	fprintf(stderr, "pod=%s/%s\n", pr->namespace_, pr->name);
	for (size_t c = 0; c < pr->n_containers; c++)
		for (size_t d = 0; d < pr->containers[c]->n_devices; d++) {
			const V1__ContainerDevices *cd = pr->containers[c]->devices[d];
			for (size_t i = 0; i < cd->n_device_ids; i++)
				fprintf(stderr, "%s.%s=%s\n", pr->containers[c]->name, cd->resource_name,
					cd->device_ids[i]);
		}
}

static void summarize(const ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *d = msg->descriptor;
	if (d == &runtime__v1__run_pod_sandbox_request__descriptor)
		summarize_run_pod_sandbox((const Runtime__V1__RunPodSandboxRequest *)msg);
	else if (d == &vmgpu__v1__gpu_device__descriptor)
		summarize_gpu_device((const Vmgpu__V1__GpuDevice *)msg);
	else if (d == &v1beta1__allocate_response__descriptor)
		summarize_allocate_response((const V1beta1__AllocateResponse *)msg);
	else if (d == &v1beta1__list_and_watch_response__descriptor)
		summarize_list_and_watch((const V1beta1__ListAndWatchResponse *)msg);
	else if (d == &v1__get_pod_resources_response__descriptor)
		summarize_pod_resources((const V1__GetPodResourcesResponse *)msg);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s TYPE < in > out | --types | --paths\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "--types") == 0) {
		for (size_t i = 0; i < N_ELEMS(descriptors); i++)
			printf("%s\n", descriptors[i]->name);
		return 0;
	}
	if (strcmp(argv[1], "--paths") == 0) {
		for (size_t i = 0; i < N_ELEMS(method_paths); i++)
			printf("%s\n", method_paths[i]);
		return 0;
	}
	const ProtobufCMessageDescriptor *desc = find_descriptor(argv[1]);
	if (!desc) {
		fprintf(stderr, "unknown type %s\n", argv[1]);
		return 2;
	}
	size_t len = 0;
	uint8_t *in = read_all(stdin, &len);
	if (!in) {
		perror("read");
		return 4;
	}
	ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, len, in);
	free(in);
	if (!msg) {
		fprintf(stderr, "cannot unpack %zu bytes as %s\n", len, desc->name);
		return 3;
	}
	summarize(msg);
	size_t out_len = protobuf_c_message_get_packed_size(msg);
	uint8_t *out = malloc(out_len ? out_len : 1);
	int rc = 0;
	if (!out || protobuf_c_message_pack(msg, out) != out_len ||
	    fwrite(out, 1, out_len, stdout) != out_len || fflush(stdout) != 0)
		rc = 4;
	free(out);
	protobuf_c_message_free_unpacked(msg, NULL);
	return rc;
}

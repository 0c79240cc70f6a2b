/* The objects vmgpu writes to the API server, built as JSON from plain values: the node labels
 * it owns, Events, and a DRA ResourceSlice for the node's GPUs. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "lib/bdf.h"

#define VG_KUBE_LABEL_COUNT "vmgpu.io/gpu.count"
#define VG_KUBE_LABEL_PRODUCT "vmgpu.io/gpu.product"
#define VG_KUBE_LABEL_PRESENT "vmgpu.io/gpu.present"
#define VG_KUBE_LABEL_READY "vmgpu.io/passthrough-ready"
/* The DRA driver name: a DNS subdomain, also the domain of our unqualified attributes. */
#define VG_KUBE_DRA_DRIVER "gpu.vmgpu.io"
#define VG_KUBE_SLICE_API "/apis/resource.k8s.io/v1/resourceslices"
/* resource.k8s.io/v1 limits. */
#define VG_KUBE_SLICE_MAX_DEVICES 128
#define VG_KUBE_ATTRIBUTE_STRING_MAX 64

/* One GPU as the API server sees it. */
struct vg_kube_gpu {
	int index;
	char bdf[VG_BDF_STRLEN];
	char pcie_root[32]; /* "pci0000:00"; "" when unknown */
	int numa_node; /* -1: unknown, left out */
	int iommu_group; /* -1: none, left out */
	uint16_t vendor_id;
	uint16_t device_id;
	char product[160]; /* the pci.ids name */
	char state[16]; /* available, allocated, unhealthy, unsupported */
};

/* A valid label value for text: at most 63 characters, alphanumeric at both ends, '-', '_'
 * and '.' inside; every other run of characters becomes one '-'. Bracketed marketing names
 * win: "GH100 [H100 SXM5 80GB]" gives "H100-SXM5-80GB". "" when nothing is left. */
void vg_kube_label_value(const char *text, char out[64]);
/* The labels vmgpu owns: vmgpu.io/gpu.* and vmgpu.io/passthrough-ready. */
bool vg_kube_label_is_ours(const char *key);
/* count, present and passthrough-ready always; product when there are GPUs ("mixed" when
 * they differ). */
json_object *vg_kube_node_labels(const struct vg_kube_gpu *gpus, size_t n_gpus,
				 bool passthrough_ready);
/* The merge patch {"metadata":{"labels":{...}}} that turns the node's current labels (NULL:
 * none) into desired for the labels we own: changed values set, stale ones null. NULL when
 * nothing needs to change. */
json_object *vg_kube_labels_patch(json_object *current, json_object *desired);

struct vg_kube_event {
	char reason[64]; /* UpperCamelCase: GPUUnhealthy, SandboxFailed... */
	char type[16]; /* Normal or Warning */
	char message[1024];
	/* The object it is about: the node (kind "Node") or a pod (kind "Pod"). */
	char kind[16];
	char name[254];
	char pod_namespace[254];
	char uid[128];
	time_t time;
};

/* The namespace the Event goes to: a pod's own, else events_namespace. */
const char *vg_kube_event_namespace(const struct vg_kube_event *ev, const char *events_namespace);
/* A core/v1 Event named <object>.<hex time>, from component vmgpu-agent on node. */
json_object *vg_kube_event_object(const struct vg_kube_event *ev, const char *node,
				  const char *events_namespace, uint64_t unique);

/* The node's ResourceSlice name: "<node>-vmgpu". */
int vg_kube_slice_name(const char *node, char *out, size_t size);
/* A resource.k8s.io/v1 ResourceSlice: one pool named after the node, one device gpu-<index>
 * per GPU (the first 128). node_uid, when known, makes the Node its owner so the slice goes
 * away with the node. */
json_object *vg_kube_resource_slice(const char *node, const char *node_uid,
				    const struct vg_kube_gpu *gpus, size_t n_gpus,
				    int64_t generation);
/* True when every field of want is in have with the same value (arrays element by element):
 * what the API server adds by defaulting does not count as a difference. */
bool vg_kube_json_contains(json_object *have, json_object *want);
/* Compact JSON text as we send it (no escaped '/'); owned by obj. */
const char *vg_kube_json_text(json_object *obj);
/* RFC 3339 in UTC, as Kubernetes writes times: "2024-05-01T10:00:00Z". */
void vg_kube_format_time(time_t t, char out[32]);
/* A DNS subdomain (RFC 1123): lowercase alphanumerics, '-' and '.', at most 253. */
bool vg_kube_is_dns_subdomain(const char *name);

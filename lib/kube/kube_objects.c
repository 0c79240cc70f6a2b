#include "lib/kube/kube_objects.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static bool is_alnum(char c)
{
	return isascii((unsigned char)c) && isalnum((unsigned char)c);
}

void vg_kube_label_value(const char *text, char out[64])
{
	const char *start = text;
	size_t len = strlen(text);
	const char *open = strchr(text, '[');
	const char *close = open ? strchr(open, ']') : NULL;
	if (close != NULL && close > open + 1) {
		start = open + 1;
		len = (size_t)(close - start);
	}
	size_t n = 0;
	for (size_t i = 0; i < len && n < 63; i++) {
		char c = start[i];
		bool allowed = is_alnum(c) || c == '-' || c == '_' || c == '.';
		if (n == 0 && !is_alnum(c))
			continue; /* a value starts with a letter or digit */
		if (allowed)
			out[n++] = c;
		else if (out[n - 1] != '-')
			out[n++] = '-';
	}
	while (n > 0 && !is_alnum(out[n - 1]))
		n--;
	out[n] = '\0';
}

bool vg_kube_label_is_ours(const char *key)
{
	return strncmp(key, "vmgpu.io/gpu.", 13) == 0 || strcmp(key, VG_KUBE_LABEL_READY) == 0;
}

json_object *vg_kube_node_labels(const struct vg_kube_gpu *gpus, size_t n_gpus,
				 bool passthrough_ready)
{
	json_object *labels = json_object_new_object();
	char count[24];
	snprintf(count, sizeof(count), "%zu", n_gpus);
	json_object_object_add(labels, VG_KUBE_LABEL_COUNT, json_object_new_string(count));
	json_object_object_add(labels, VG_KUBE_LABEL_PRESENT,
			       json_object_new_string(n_gpus > 0 ? "true" : "false"));
	json_object_object_add(labels, VG_KUBE_LABEL_READY,
			       json_object_new_string(passthrough_ready ? "true" : "false"));
	if (n_gpus > 0) {
		char product[64];
		vg_kube_label_value(gpus[0].product, product);
		for (size_t i = 1; i < n_gpus; i++)
			if (strcmp(gpus[i].product, gpus[0].product) != 0)
				snprintf(product, sizeof(product), "mixed");
		if (product[0] != '\0')
			json_object_object_add(labels, VG_KUBE_LABEL_PRODUCT,
					       json_object_new_string(product));
	}
	return labels;
}

json_object *vg_kube_labels_patch(json_object *current, json_object *desired)
{
	json_object *changes = json_object_new_object();
	json_object_object_foreach(desired, key, value)
	{
		json_object *have = NULL;
		if (current == NULL || !json_object_object_get_ex(current, key, &have) ||
		    !json_object_equal(have, value))
			json_object_object_add(changes, key, json_object_get(value));
	}
	if (current != NULL) {
		json_object_object_foreach(current, ckey, cvalue)
		{
			(void)cvalue;
			if (vg_kube_label_is_ours(ckey) &&
			    !json_object_object_get_ex(desired, ckey, NULL))
				/* A null member in a merge patch deletes the label (RFC 7386). */
				json_object_object_add(changes, ckey, NULL);
		}
	}
	if (json_object_object_length(changes) == 0) {
		json_object_put(changes);
		return NULL;
	}
	json_object *metadata = json_object_new_object();
	json_object_object_add(metadata, "labels", changes);
	json_object *patch = json_object_new_object();
	json_object_object_add(patch, "metadata", metadata);
	return patch;
}

const char *vg_kube_json_text(json_object *obj)
{
	return json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
							   JSON_C_TO_STRING_NOSLASHESCAPE);
}

void vg_kube_format_time(time_t t, char out[32])
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

bool vg_kube_is_dns_subdomain(const char *name)
{
	size_t len = strlen(name);
	if (len == 0 || len > 253 || !is_alnum(name[0]) || !is_alnum(name[len - 1]))
		return false;
	for (const char *c = name; *c; c++)
		if (!(islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '-' ||
		      *c == '.'))
			return false;
	return true;
}

const char *vg_kube_event_namespace(const struct vg_kube_event *ev, const char *events_namespace)
{
	return ev->pod_namespace[0] != '\0' ? ev->pod_namespace : events_namespace;
}

static void add_string(json_object *obj, const char *key, const char *value)
{
	json_object_object_add(obj, key, json_object_new_string(value));
}

json_object *vg_kube_event_object(const struct vg_kube_event *ev, const char *node,
				  const char *events_namespace, uint64_t unique)
{
	const char *ns = vg_kube_event_namespace(ev, events_namespace);
	char name[254];
	/* Like the kubelet's names: the object, a dot, a unique hex number. */
	const char *base = vg_kube_is_dns_subdomain(ev->name) ? ev->name : "vmgpu";
	snprintf(name, sizeof(name), "%.*s.%016" PRIx64, 253 - 17, base, unique);
	char when[32];
	vg_kube_format_time(ev->time, when);

	json_object *metadata = json_object_new_object();
	add_string(metadata, "name", name);
	add_string(metadata, "namespace", ns);
	json_object *involved = json_object_new_object();
	add_string(involved, "apiVersion", "v1");
	add_string(involved, "kind", ev->kind);
	add_string(involved, "name", ev->name);
	/* The API server wants a cluster-scoped object's events in "default" unless the
	 * involved object names the event's namespace; a pod's event lives beside the pod. */
	if (ev->pod_namespace[0] != '\0')
		add_string(involved, "namespace", ev->pod_namespace);
	else if (strcmp(ns, "default") != 0)
		add_string(involved, "namespace", ns);
	if (ev->uid[0] != '\0')
		add_string(involved, "uid", ev->uid);
	json_object *source = json_object_new_object();
	add_string(source, "component", "vmgpu-agent");
	add_string(source, "host", node);

	json_object *event = json_object_new_object();
	add_string(event, "apiVersion", "v1");
	add_string(event, "kind", "Event");
	json_object_object_add(event, "metadata", metadata);
	json_object_object_add(event, "involvedObject", involved);
	add_string(event, "reason", ev->reason);
	add_string(event, "message", ev->message);
	add_string(event, "type", ev->type);
	json_object_object_add(event, "source", source);
	add_string(event, "firstTimestamp", when);
	add_string(event, "lastTimestamp", when);
	json_object_object_add(event, "count", json_object_new_int(1));
	add_string(event, "reportingComponent", "vmgpu-agent");
	add_string(event, "reportingInstance", node);
	return event;
}

int vg_kube_slice_name(const char *node, char *out, size_t size)
{
	int n = snprintf(out, size, "%s-vmgpu", node);
	if (n < 0 || (size_t)n >= size || n > 253)
		return -ENAMETOOLONG;
	return 0;
}

static void add_attribute(json_object *attrs, const char *name, const char *type,
			  json_object *value)
{
	json_object *typed = json_object_new_object();
	json_object_object_add(typed, type, value);
	json_object_object_add(attrs, name, typed);
}

/* At most 64 bytes, cut before a UTF-8 continuation byte so the string stays valid. */
static json_object *attribute_string(const char *text)
{
	size_t len = strlen(text);
	if (len > VG_KUBE_ATTRIBUTE_STRING_MAX) {
		len = VG_KUBE_ATTRIBUTE_STRING_MAX;
		while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
			len--;
	}
	return json_object_new_string_len(text, (int)len);
}

static json_object *slice_device(const struct vg_kube_gpu *gpu)
{
	json_object *attrs = json_object_new_object();
	char hex[8];
	add_attribute(attrs, "resource.kubernetes.io/pciBusID", "string",
		      json_object_new_string(gpu->bdf));
	if (gpu->pcie_root[0] != '\0')
		add_attribute(attrs, "resource.kubernetes.io/pcieRoot", "string",
			      json_object_new_string(gpu->pcie_root));
	if (gpu->numa_node >= 0)
		add_attribute(attrs, "numa", "int", json_object_new_int64(gpu->numa_node));
	add_attribute(attrs, "productName", "string", attribute_string(gpu->product));
	snprintf(hex, sizeof(hex), "0x%04x", gpu->vendor_id);
	add_attribute(attrs, "vendorID", "string", json_object_new_string(hex));
	snprintf(hex, sizeof(hex), "0x%04x", gpu->device_id);
	add_attribute(attrs, "deviceID", "string", json_object_new_string(hex));
	if (gpu->iommu_group >= 0)
		add_attribute(attrs, "iommuGroup", "int", json_object_new_int64(gpu->iommu_group));
	add_attribute(attrs, "state", "string", json_object_new_string(gpu->state));
	/* A device name is a DNS label, so not a BDF: the stable index names it. */
	char name[32];
	snprintf(name, sizeof(name), "gpu-%d", gpu->index);
	json_object *device = json_object_new_object();
	add_string(device, "name", name);
	json_object_object_add(device, "attributes", attrs);
	return device;
}

json_object *vg_kube_resource_slice(const char *node, const char *node_uid,
				    const struct vg_kube_gpu *gpus, size_t n_gpus,
				    int64_t generation)
{
	char name[256];
	if (vg_kube_slice_name(node, name, sizeof(name)) < 0)
		return NULL;
	json_object *metadata = json_object_new_object();
	add_string(metadata, "name", name);
	if (node_uid != NULL && node_uid[0] != '\0') {
		json_object *owner = json_object_new_object();
		add_string(owner, "apiVersion", "v1");
		add_string(owner, "kind", "Node");
		add_string(owner, "name", node);
		add_string(owner, "uid", node_uid);
		json_object_object_add(owner, "controller", json_object_new_boolean(true));
		json_object *owners = json_object_new_array();
		json_object_array_add(owners, owner);
		json_object_object_add(metadata, "ownerReferences", owners);
	}
	json_object *pool = json_object_new_object();
	add_string(pool, "name", node);
	json_object_object_add(pool, "generation", json_object_new_int64(generation));
	json_object_object_add(pool, "resourceSliceCount", json_object_new_int64(1));
	json_object *devices = json_object_new_array();
	for (size_t i = 0; i < n_gpus && i < VG_KUBE_SLICE_MAX_DEVICES; i++)
		json_object_array_add(devices, slice_device(&gpus[i]));
	json_object *spec = json_object_new_object();
	add_string(spec, "driver", VG_KUBE_DRA_DRIVER);
	add_string(spec, "nodeName", node);
	json_object_object_add(spec, "pool", pool);
	json_object_object_add(spec, "devices", devices);

	json_object *slice = json_object_new_object();
	add_string(slice, "apiVersion", "resource.k8s.io/v1");
	add_string(slice, "kind", "ResourceSlice");
	json_object_object_add(slice, "metadata", metadata);
	json_object_object_add(slice, "spec", spec);
	return slice;
}

bool vg_kube_json_contains(json_object *have, json_object *want)
{
	if (want == NULL || have == NULL)
		return want == have;
	if (json_object_get_type(have) != json_object_get_type(want))
		return false;
	switch (json_object_get_type(want)) {
	case json_type_object: {
		json_object_object_foreach(want, key, value)
		{
			json_object *member = NULL;
			if (!json_object_object_get_ex(have, key, &member) ||
			    !vg_kube_json_contains(member, value))
				return false;
		}
		return true;
	}
	case json_type_array: {
		size_t n = json_object_array_length(want);
		if (json_object_array_length(have) != n)
			return false;
		for (size_t i = 0; i < n; i++)
			if (!vg_kube_json_contains(json_object_array_get_idx(have, i),
						   json_object_array_get_idx(want, i)))
				return false;
		return true;
	}
	default:
		return json_object_equal(have, want);
	}
}

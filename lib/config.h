/* /etc/vmgpu/config.yaml, read strictly with libyaml: unknown keys and bad values are errors
 * that name the key and its line. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#include "lib/gpu_filter.h"
#include "lib/log.h"

struct vg_error;

#define VG_DEFAULT_CONFIG_PATH "/etc/vmgpu/config.yaml"

/* A kubelet extended resource name, "domain/name": at most 253 + 1 + 63 characters. */
#define VG_RESOURCE_NAME_MAX 320
#define VG_MAX_RESOURCE_ALIASES 16

enum vg_resource_naming {
	VG_RESOURCE_SINGLE,    /* every GPU under resource_name */
	VG_RESOURCE_PER_MODEL, /* "<domain of resource_name>/<model from pci.ids>", or an alias */
};

/* resource_aliases: a GPU model (its pci.ids name as a resource name, GH100_H100_SXM5_80GB, or
 * its "vendor:device" ids) and the resource it is advertised under instead. */
struct vg_resource_alias {
	char model[96];
	char name[VG_RESOURCE_NAME_MAX]; /* "domain/name", or "name" in resource_name's domain */
};

struct vg_config {
	char sysfs_root[PATH_MAX];
	char dev_root[PATH_MAX];
	char proc_root[PATH_MAX];
	char modules_dir[PATH_MAX]; /* "": /lib/modules/$(uname -r) */
	char pci_ids[PATH_MAX]; /* "": libpci's default database */
	char qemu_binary[PATH_MAX]; /* "": qemu-system-<host arch> */
	bool allow_boot_vga;
	struct vg_gpu_filter filter;
	/* The agent's API, its state and its sandboxes. */
	char socket[108]; /* sun_path */
	char state_dir[PATH_MAX];
	char shim_binary[PATH_MAX]; /* "": next to vmgpu-agent, or ../libexec/vmgpu */
	char guest_kernel[PATH_MAX]; /* used when a request names no vmgpu.io/kernel */
	char guest_initrd[PATH_MAX];
	char accel[8]; /* auto, kvm or tcg */
	char network_pool[32]; /* IPv4 CIDR carved into one /30 per sandbox */
	long long default_vcpus;
	long long default_memory_mib;
	long long qemu_uid; /* -1: QEMU runs as root (a stopgap) */
	long long qemu_gid;
	double health_interval_s; /* fractions allowed: tests rescan twice a second */
	long long ready_timeout_s;
	/* Kubernetes: the device plugin and PodResources (docs/kubernetes.md). */
	char kubelet_dir[PATH_MAX];	/* "": no device plugin */
	char pod_resources_socket[108]; /* "": RunPodSandbox does not ask the kubelet */
	enum vg_resource_naming resource_naming;
	char resource_name[VG_RESOURCE_NAME_MAX];
	struct vg_resource_alias resource_aliases[VG_MAX_RESOURCE_ALIASES];
	size_t n_resource_aliases;
	/* The Kubernetes API: node labels, Events and a ResourceSlice (agent/kube_sync.c). */
	char kube_enabled[8]; /* auto (when in a pod or given a kubeconfig), true or false */
	char kubeconfig[PATH_MAX]; /* "": the pod's service account */
	char node_name[254]; /* "": env NODE_NAME, else the host name */
	char events_namespace[64];
	bool resource_slices;
	long long label_interval_s;
	enum vg_log_format log_format;
	enum vg_log_level log_level;
};

void vg_config_defaults(struct vg_config *config);
/* Applies the file over the current values. A missing file is an error unless optional. */
int vg_config_load_file(struct vg_config *config, const char *path, bool optional,
			struct vg_error **err);
/* Whether text is a resource name the kubelet accepts from a device plugin: "domain/name" with
 * a DNS subdomain outside kubernetes.io and a qualified name of at most 63 characters. */
int vg_resource_name_check(const char *text, struct vg_error **err);
int vg_config_load_string(struct vg_config *config, const char *text, size_t len,
			  const char *origin, struct vg_error **err);

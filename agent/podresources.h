/* The kubelet's PodResources API (v1), asked from the loop: which of our GPUs the kubelet gave
 * one pod (RunPodSandbox for that pod takes exactly those), and which it gave any pod (our own
 * API must never hand those out). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "agent/device_table.h"
#include "lib/bdf.h"
#include "lib/config.h"

struct vg_error;
struct vg_grpc_loop;

/* One device ID of one of our resources that the kubelet assigned to a pod. */
struct vg_pod_gpu {
	char id[64]; /* the device ID as the kubelet reported it (a BDF, for us) */
	char resource[VG_RESOURCE_NAME_MAX];
	char pod[VG_KUBELET_POD_MAX]; /* "namespace/name" */
	int pos; /* the GPU in the device table, or -1: no GPU of this node has that ID */
};

struct vg_pod_gpus {
	struct vg_pod_gpu *items; /* each ID once per pod */
	size_t n;
};

void vg_pod_gpus_clear(struct vg_pod_gpus *gpus);

/* Called exactly once on the loop thread. err NULL: gpus says what the kubelet reported (maybe
 * nothing). err set: the kubelet could not be asked; err->code is ENOENT when nothing listens
 * on the socket (no kubelet), ECANCELED when the agent is stopping, ETIMEDOUT or EIO else. */
typedef void (*vg_pod_gpus_fn)(void *ctx, const struct vg_pod_gpus *gpus,
			       const struct vg_error *err);

/* The GPUs of pod namespace/name: Get, and where the kubelet does not serve Get (UNIMPLEMENTED
 * before 1.27, an error while the KubeletPodResourcesGet gate is off) List and a filter. The
 * table is read when the answer arrives. */
int vg_podresources_pod_gpus(struct vg_grpc_loop *loop, const struct vg_config *config,
			     const struct vg_device_table *table, const char *pod_namespace,
			     const char *pod_name, vg_pod_gpus_fn done, void *ctx,
			     struct vg_error **err);

/* Every pod's GPUs: List. */
int vg_podresources_all_gpus(struct vg_grpc_loop *loop, const struct vg_config *config,
			     const struct vg_device_table *table, vg_pod_gpus_fn done, void *ctx,
			     struct vg_error **err);

/* Brings the table's kubelet holds in line with a full List: a listed GPU is held for its pod;
 * a held GPU the List misses is released when the hold came from a List, or from an Allocate
 * older than grace_ms (the kubelet records a pod's devices only after Allocate returns). */
void vg_podresources_apply_holds(struct vg_device_table *table, const struct vg_pod_gpus *all,
				 int64_t grace_ms);

/* Whether a socket file is at path: the kubelet is (or was) serving there. */
bool vg_podresources_socket_present(const char *path);

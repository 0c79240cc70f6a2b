/* Tells the Kubernetes API server about this node: the vmgpu.io/ node labels, Events for
 * failed sandboxes and for GPUs that turn unhealthy or unsupported, and (when enabled) a DRA
 * ResourceSlice. Every request runs on a thread of its own with retries and backoff; the loop
 * thread only hands over what it saw, so a slow or absent API server never delays the kubelet
 * or the CRI API. */
#pragma once

struct vg_config;
struct vg_device_table;
struct vg_error;
struct vg_sandboxes;
struct vg_kube_sync;

/* *out is NULL when Kubernetes is off: kube_enabled false, or auto with neither a kubeconfig
 * nor a pod's environment (KUBERNETES_SERVICE_HOST). */
int vg_kube_sync_start(const struct vg_config *config, struct vg_kube_sync **out,
		       struct vg_error **err);
/* On the loop thread after anything changed: copies what the API server should show and
 * queues Events for what turned bad since the last call. Cheap; a NULL sync does nothing. */
void vg_kube_sync_observe(struct vg_kube_sync *sync, const struct vg_device_table *devices,
			  const struct vg_sandboxes *sandboxes);
/* Cancels a request in flight, joins the thread and frees everything; NULL is fine. */
void vg_kube_sync_stop(struct vg_kube_sync *sync);

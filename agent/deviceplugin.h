/* The kubelet device plugin, v1beta1: one endpoint per resource name in the kubelet's
 * device-plugins directory (vmgpu.sock, or vmgpu-<model>.sock per model), each registered with
 * the kubelet once it serves and served again whenever the kubelet restarts. The device table
 * stays the one source of truth: GPUs our own API holds are Unhealthy to the kubelet, and GPUs
 * the kubelet allocated (Allocate, PodResources) are never handed out by our API. */
#pragma once

#include "lib/config.h"

struct vg_device_table;
struct vg_error;
struct vg_gpu;
struct vg_grpc_loop;
struct vg_device_plugin;

/* The resource a GPU is advertised under: resource_name in single mode; per model, the alias
 * of its model or "<resource_name's domain>/<model>", the model being its pci.ids name with
 * every run of other characters turned into one '_' (GH100_H100_SXM5_80GB). */
void vg_resource_name_of(const struct vg_config *config, const struct vg_gpu *gpu,
			 char out[VG_RESOURCE_NAME_MAX]);

/* Starts serving (nothing when config->kubelet_dir is ""). A kubelet that is not there is no
 * error: the plugin serves and registers once it appears. changed(ctx) runs on the loop after
 * the plugin marked GPUs as the kubelet's; the caller then refreshes the table and publishes,
 * as after any other change. */
int vg_device_plugin_start(const struct vg_config *config, struct vg_grpc_loop *loop,
			   struct vg_device_table *table, void (*changed)(void *ctx), void *ctx,
			   struct vg_device_plugin **out, struct vg_error **err);
/* After any change of the table: new resources get an endpoint, and every ListAndWatch stream
 * whose device list or health changed gets the new list. Accepts NULL. */
void vg_device_plugin_publish(struct vg_device_plugin *dp);
/* The agent is stopping (call it before vg_grpc_loop_stop): no more restarts or registering;
 * the loop then ends our ListAndWatch streams, so the kubelet notices. Accepts NULL. */
void vg_device_plugin_stop(struct vg_device_plugin *dp);
/* After vg_grpc_loop_run has returned (the servers are down). Accepts NULL. */
void vg_device_plugin_free(struct vg_device_plugin *dp);

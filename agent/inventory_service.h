/* vmgpu.v1.Inventory: capabilities, the device list, and a stream of snapshots. */
#pragma once

struct vg_device_table;
struct vg_error;
struct vg_grpc_server;
struct vg_inventory_service;

int vg_inventory_service_register(struct vg_grpc_server *server, struct vg_device_table *table,
				  struct vg_inventory_service **out, struct vg_error **err);
/* Sends a fresh snapshot to every watcher when the table's generation moved. */
void vg_inventory_service_publish(struct vg_inventory_service *service);
void vg_inventory_service_free(struct vg_inventory_service *service);

/*
 * Byte-exact gRPC method paths ("/package.Service/Method") for every RPC of the four APIs in
 * api/. grpc core registers and calls methods by these strings; protobuf-c generates no service
 * code (api/CMakeLists.txt strips the service blocks), so they are written here by hand and must
 * match the `package`, `service` and `rpc` names of the .proto files exactly.
 * tests/integration/test_protos.py checks each one against the Python descriptors.
 */
#pragma once

/* CRI RuntimeService, sandbox subset: api/runtime/v1/api.proto (package runtime.v1). */
#define VG_CRI_VERSION "/runtime.v1.RuntimeService/Version"
#define VG_CRI_RUN_POD_SANDBOX "/runtime.v1.RuntimeService/RunPodSandbox"
#define VG_CRI_STOP_POD_SANDBOX "/runtime.v1.RuntimeService/StopPodSandbox"
#define VG_CRI_REMOVE_POD_SANDBOX "/runtime.v1.RuntimeService/RemovePodSandbox"
#define VG_CRI_POD_SANDBOX_STATUS "/runtime.v1.RuntimeService/PodSandboxStatus"
#define VG_CRI_LIST_POD_SANDBOX "/runtime.v1.RuntimeService/ListPodSandbox"
#define VG_CRI_STATUS "/runtime.v1.RuntimeService/Status"

/* vmgpu Inventory: api/vmgpu/v1/inventory.proto (package vmgpu.v1). WatchDevices streams. */
#define VG_INVENTORY_GET_CAPABILITIES "/vmgpu.v1.Inventory/GetCapabilities"
#define VG_INVENTORY_LIST_DEVICES "/vmgpu.v1.Inventory/ListDevices"
#define VG_INVENTORY_WATCH_DEVICES "/vmgpu.v1.Inventory/WatchDevices"

/* Kubelet device plugin: api/deviceplugin/v1beta1/api.proto (package v1beta1).
 * Registration is served by kubelet (we call it); DevicePlugin is served by us.
 * ListAndWatch streams. */
#define VG_DP_REGISTER "/v1beta1.Registration/Register"
#define VG_DP_GET_DEVICE_PLUGIN_OPTIONS "/v1beta1.DevicePlugin/GetDevicePluginOptions"
#define VG_DP_LIST_AND_WATCH "/v1beta1.DevicePlugin/ListAndWatch"
#define VG_DP_GET_PREFERRED_ALLOCATION "/v1beta1.DevicePlugin/GetPreferredAllocation"
#define VG_DP_ALLOCATE "/v1beta1.DevicePlugin/Allocate"
#define VG_DP_PRE_START_CONTAINER "/v1beta1.DevicePlugin/PreStartContainer"

/* Kubelet PodResources: api/podresources/v1/api.proto (package v1), served by kubelet. */
#define VG_PODRES_LIST "/v1.PodResourcesLister/List"
#define VG_PODRES_GET_ALLOCATABLE_RESOURCES "/v1.PodResourcesLister/GetAllocatableResources"
#define VG_PODRES_GET "/v1.PodResourcesLister/Get"

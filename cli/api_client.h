/* vmgpuctl's side of the agent's API: one blocking unary call per request, packed and unpacked
 * with protobuf-c, and errors worded for a person at a terminal. */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>

#include "lib/grpc/vg_grpc.h"
#include "runtime/v1/api.pb-c.h"
#include "vmgpu/v1/inventory.pb-c.h"

struct vg_cli_options;
struct vg_error;

struct vg_api {
	const char *socket;
	int timeout_ms;
	bool reachable; /* a plain connect() worked once: no need to probe again */
};

/* socket from --socket or the config; --timeout overrides default_timeout_s. */
void vg_api_init(struct vg_api *api, const struct vg_cli_options *opts, int default_timeout_s);

/* Calls method and unpacks the reply as response_desc into *response (free it with
 * protobuf_c_message_free_unpacked, or a cleanup_proto variable). On failure returns <0 with
 * *err "CODE_NAME: details" for a gRPC status, or a "cannot reach the vmgpu agent" message with
 * a hint; *code (when not NULL) gets the status, VG_GRPC_UNAVAILABLE when unreachable. */
int vg_api_call(struct vg_api *api, const char *method, const ProtobufCMessage *request,
		const ProtobufCMessageDescriptor *response_desc, ProtobufCMessage **response,
		enum vg_grpc_code *code, struct vg_error **err);

/* "RESOURCE_EXHAUSTED" for 8; "CODE_<n>" for a number outside gRPC's list. */
const char *vg_grpc_code_name(int code);

/* The calls more than one verb makes. */
int vg_api_list_devices(struct vg_api *api, Vmgpu__V1__ListDevicesResponse **out,
			struct vg_error **err);
int vg_api_sandbox_status(struct vg_api *api, const char *id,
			  Runtime__V1__PodSandboxStatusResponse **out, enum vg_grpc_code *code,
			  struct vg_error **err);

/* Free a message returned by vg_api_call when the variable goes out of scope. */
static inline void vg_proto_freep(void *p)
{
	ProtobufCMessage **message = p;
	if (*message)
		protobuf_c_message_free_unpacked(*message, NULL);
}
#define cleanup_proto __attribute__((cleanup(vg_proto_freep)))

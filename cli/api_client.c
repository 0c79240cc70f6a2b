#include "cli/api_client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "cli/options.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "method_paths.h"

void vg_api_init(struct vg_api *api, const struct vg_cli_options *opts, int default_timeout_s)
{
	api->socket = opts->config.socket;
	api->timeout_ms = (int)(opts->timeout_s > 0 ? opts->timeout_s : default_timeout_s) * 1000;
	api->reachable = false;
}

const char *vg_grpc_code_name(int code)
{
	static const char *const names[] = {
		"OK",		     "CANCELLED",	   "UNKNOWN",	   "INVALID_ARGUMENT",
		"DEADLINE_EXCEEDED", "NOT_FOUND",	   "ALREADY_EXISTS", "PERMISSION_DENIED",
		"RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",	   "OUT_OF_RANGE",
		"UNIMPLEMENTED",     "INTERNAL",	   "UNAVAILABLE",   "DATA_LOSS",
		"UNAUTHENTICATED",
	};
	if (code >= 0 && (size_t)code < VG_ARRAY_SIZE(names))
		return names[code];
	return "CODE_UNKNOWN";
}

/* The errno a status stands for, so vg_error_code() stays meaningful for callers. */
static int errno_from_code(enum vg_grpc_code code)
{
	switch (code) {
	case VG_GRPC_INVALID_ARGUMENT:
		return EINVAL;
	case VG_GRPC_NOT_FOUND:
		return ENOENT;
	case VG_GRPC_ALREADY_EXISTS:
		return EEXIST;
	case VG_GRPC_RESOURCE_EXHAUSTED:
		return ENOSPC;
	case VG_GRPC_FAILED_PRECONDITION:
		return EBUSY;
	case VG_GRPC_DEADLINE_EXCEEDED:
		return ETIMEDOUT;
	case VG_GRPC_UNAVAILABLE:
		return ECONNREFUSED;
	case VG_GRPC_UNIMPLEMENTED:
		return ENOSYS;
	default:
		return EIO;
	}
}

static int unreachable(const struct vg_api *api, int code, const char *why, struct vg_error **err)
{
	/* EACCES is the one case where the agent runs fine and the fix is on our side. */
	const char *hint = code == EACCES ? "run as root or as a member of the socket's group"
					  : "is vmgpu-agent running?";
	return vg_error_set(err, code, "cannot reach the vmgpu agent at %s: %s; %s (--socket PATH)",
			    api->socket, why, hint);
}

/* grpc reports a missing socket as a generic UNAVAILABLE after its own retries; a plain
 * connect() first says exactly what is wrong (no such file, refused, permission denied). */
static int check_reachable(struct vg_api *api, struct vg_error **err)
{
	if (api->reachable)
		return 0;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(api->socket) >= sizeof(addr.sun_path))
		return vg_error_set(err, ENAMETOOLONG, "socket path %s is longer than %zu bytes",
				    api->socket, sizeof(addr.sun_path) - 1);
	strcpy(addr.sun_path, api->socket);
	cleanup_close int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "socket(AF_UNIX)");
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int e = errno;
		return unreachable(api, e, strerror(e), err);
	}
	api->reachable = true;
	return 0;
}

int vg_api_call(struct vg_api *api, const char *method, const ProtobufCMessage *request,
		const ProtobufCMessageDescriptor *response_desc, ProtobufCMessage **response,
		enum vg_grpc_code *code, struct vg_error **err)
{
	enum vg_grpc_code unused;
	code = code ? code : &unused;
	*code = VG_GRPC_UNAVAILABLE;
	*response = NULL;
	int ret = check_reachable(api, err);
	if (ret < 0)
		return ret;

	size_t len = protobuf_c_message_get_packed_size(request);
	cleanup_free uint8_t *packed = malloc(len ? len : 1);
	if (packed == NULL)
		return vg_error_set(err, ENOMEM, "cannot pack the %s request", method);
	protobuf_c_message_pack(request, packed);

	struct vg_grpc_reply reply = { 0 };
	ret = vg_grpc_call_blocking(api->socket, method, packed, len, api->timeout_ms, &reply, err);
	if (ret < 0) {
		vg_grpc_reply_clear(&reply);
		return vg_error_prefix(err, "%s", method);
	}
	*code = reply.code;
	const char *details = reply.details && reply.details[0] ? reply.details : "(no message)";
	if (reply.code == VG_GRPC_UNAVAILABLE) {
		/* The socket accepted a connection, but no gRPC server answered on it. */
		char why[512];
		snprintf(why, sizeof(why), "UNAVAILABLE: %s", details);
		ret = unreachable(api, ECONNREFUSED, why, err);
	} else if (reply.code != VG_GRPC_OK) {
		ret = vg_error_set(err, errno_from_code(reply.code), "%s: %s",
				   vg_grpc_code_name(reply.code), details);
	} else {
		*response = protobuf_c_message_unpack(response_desc, NULL, reply.message_len,
						      reply.message);
		if (*response == NULL) {
			*code = VG_GRPC_INTERNAL;
			ret = vg_error_set(err, EPROTO,
					   "%s: the agent's reply is not a valid %s message", method,
					   response_desc->name);
		}
	}
	vg_grpc_reply_clear(&reply);
	return ret;
}

int vg_api_list_devices(struct vg_api *api, Vmgpu__V1__ListDevicesResponse **out,
			struct vg_error **err)
{
	Vmgpu__V1__ListDevicesRequest request = VMGPU__V1__LIST_DEVICES_REQUEST__INIT;
	return vg_api_call(api, VG_INVENTORY_LIST_DEVICES, &request.base,
			   &vmgpu__v1__list_devices_response__descriptor, (ProtobufCMessage **)out,
			   NULL, err);
}

int vg_api_sandbox_status(struct vg_api *api, const char *id,
			  Runtime__V1__PodSandboxStatusResponse **out, enum vg_grpc_code *code,
			  struct vg_error **err)
{
	Runtime__V1__PodSandboxStatusRequest request = RUNTIME__V1__POD_SANDBOX_STATUS_REQUEST__INIT;
	request.pod_sandbox_id = (char *)id;
	request.verbose = true; /* the vmgpu details travel in the verbose info map */
	return vg_api_call(api, VG_CRI_POD_SANDBOX_STATUS, &request.base,
			   &runtime__v1__pod_sandbox_status_response__descriptor,
			   (ProtobufCMessage **)out, code, err);
}

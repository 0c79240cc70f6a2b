/* Process-wide grpc set-up shared by the loop and the blocking clients: logging, channel args,
 * and byte-buffer conversions. */
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <errno.h>
#include <grpc/support/log.h>
#include <stdlib.h>
#include <string.h>

#include "lib/grpc/grpc-priv.h"
#include "lib/log.h"

/* grpc may log from any of its threads; vg_log writes each line with one fprintf. */
static void log_sink(gpr_log_func_args *args)
{
	const char *file = args->file ? strrchr(args->file, '/') : NULL;
	file = file ? file + 1 : (args->file ? args->file : "?");
	/* grpc's errors are often about a peer, not about us: warn, and keep the rest for debug. */
	enum vg_log_level level =
		args->severity == GPR_LOG_SEVERITY_ERROR ? VG_LOG_WARN : VG_LOG_DEBUG;
	vg_log(level, "grpc: %s (%s:%d)", args->message, file, args->line);
}

void vg_grpc_global_init(void)
{
	/* Before grpc_init, so its start-up messages are routed too. The verbosity stays grpc's
	 * own (GRPC_VERBOSITY, default ERROR): its debug output is only useful when asked for. */
	gpr_set_log_function(log_sink);
	grpc_init();
}

static grpc_arg server_arg_list[] = {
	{ .type = GRPC_ARG_INTEGER,
	  .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
	  .value.integer = VG_GRPC_MAX_MESSAGE },
};

/* Local sockets are cheap to retry: a peer that is starting up (wait_for_ready) is found
 * within 100 ms to 1 s instead of grpc's default 1 s growing to 120 s. */
static grpc_arg client_arg_list[] = {
	{ .type = GRPC_ARG_INTEGER,
	  .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
	  .value.integer = VG_GRPC_MAX_MESSAGE },
	{ .type = GRPC_ARG_INTEGER,
	  .key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
	  .value.integer = 100 },
	{ .type = GRPC_ARG_INTEGER,
	  .key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
	  .value.integer = 1000 },
};

static const grpc_channel_args server_args = { .num_args = 1, .args = server_arg_list };
static const grpc_channel_args client_args = { .num_args = 3, .args = client_arg_list };

const grpc_channel_args *vg_grpc_server_args(void)
{
	return &server_args;
}

const grpc_channel_args *vg_grpc_client_args(void)
{
	return &client_args;
}

grpc_byte_buffer *vg_grpc_buffer_from_bytes(const uint8_t *data, size_t len)
{
	grpc_slice slice = grpc_slice_from_copied_buffer((const char *)data, len);
	grpc_byte_buffer *buffer = grpc_raw_byte_buffer_create(&slice, 1);
	grpc_slice_unref(slice); /* the buffer holds its own reference */
	return buffer;
}

bool vg_grpc_buffer_to_slice(grpc_byte_buffer *buffer, grpc_slice *out)
{
	grpc_byte_buffer_reader reader;
	/* Received messages arrive in many slices (a 3 MB one in hundreds); readall joins them. */
	if (!grpc_byte_buffer_reader_init(&reader, buffer))
		return false;
	*out = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	return true;
}

int vg_grpc_buffer_to_bytes(grpc_byte_buffer *buffer, uint8_t **data, size_t *len)
{
	grpc_byte_buffer_reader reader;
	if (!grpc_byte_buffer_reader_init(&reader, buffer))
		return -EIO;
	/* buffer_out is the decompressed message when the peer compressed it. */
	size_t total = grpc_byte_buffer_length(reader.buffer_out);
	uint8_t *out = malloc(total > 0 ? total : 1);
	if (out == NULL) {
		grpc_byte_buffer_reader_destroy(&reader);
		return -ENOMEM;
	}
	/* One copy from grpc's slices straight into the caller's buffer. */
	size_t used = 0;
	grpc_slice slice;
	while (grpc_byte_buffer_reader_next(&reader, &slice)) {
		size_t n = GRPC_SLICE_LENGTH(slice);
		if (n > total - used)
			n = total - used;
		memcpy(out + used, GRPC_SLICE_START_PTR(slice), n);
		used += n;
		grpc_slice_unref(slice);
	}
	grpc_byte_buffer_reader_destroy(&reader);
	*data = out;
	*len = used;
	return 0;
}

char *vg_grpc_slice_to_string(grpc_slice slice)
{
	size_t len = GRPC_SLICE_LENGTH(slice);
	char *s = malloc(len + 1);
	if (s == NULL)
		return NULL;
	if (len > 0)
		memcpy(s, GRPC_SLICE_START_PTR(slice), len);
	s[len] = '\0';
	return s;
}

void vg_grpc_reply_clear(struct vg_grpc_reply *reply)
{
	if (reply == NULL)
		return;
	free(reply->details);
	free(reply->message);
	reply->details = NULL;
	reply->message = NULL;
	reply->message_len = 0;
}

enum vg_grpc_code vg_grpc_code_from_errno(int code)
{
	switch (code < 0 ? -code : code) {
	case EINVAL:
		return VG_GRPC_INVALID_ARGUMENT;
	case ENOENT:
		return VG_GRPC_NOT_FOUND;
	case EBUSY:
		return VG_GRPC_FAILED_PRECONDITION;
	case ENOSPC:
		return VG_GRPC_RESOURCE_EXHAUSTED;
	case EEXIST:
		return VG_GRPC_ALREADY_EXISTS;
	case ETIMEDOUT:
		return VG_GRPC_DEADLINE_EXCEEDED;
	default:
		return VG_GRPC_INTERNAL;
	}
}

#include "shim/qmp.h"

#include <errno.h>
#include <stdbool.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int connect_unix(const char *path, int *out)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int saved = errno;
		close(fd);
		return -saved;
	}
	*out = fd;
	return 0;
}

/* Returns one JSON message (a line); NULL with *err set on timeout or EOF. */
static json_object *read_message(struct vg_qmp *qmp, long long deadline, struct vg_error **err)
{
	for (;;) {
		char *nl = memchr(qmp->buf, '\n', qmp->len);
		if (nl != NULL) {
			*nl = '\0';
			json_object *msg = json_tokener_parse(qmp->buf);
			size_t used = (size_t)(nl - qmp->buf) + 1;
			memmove(qmp->buf, nl + 1, qmp->len - used);
			qmp->len -= used;
			if (msg != NULL)
				return msg;
			continue;
		}
		if (qmp->len == sizeof(qmp->buf)) {
			vg_error_set(err, EMSGSIZE, "QMP message larger than %zu bytes",
				     sizeof(qmp->buf));
			return NULL;
		}
		long long left = deadline - now_ms();
		if (left <= 0) {
			vg_error_set(err, ETIMEDOUT, "QMP did not answer in time");
			return NULL;
		}
		struct pollfd pfd = { .fd = qmp->fd, .events = POLLIN };
		int pr = poll(&pfd, 1, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0) {
			vg_error_set_errno(err, errno, "QMP poll");
			return NULL;
		}
		if (pr == 0)
			continue;
		ssize_t n = read(qmp->fd, qmp->buf + qmp->len, sizeof(qmp->buf) - qmp->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			vg_error_set(err, EPIPE, "QMP connection closed");
			return NULL;
		}
		qmp->len += (size_t)n;
	}
}

static int send_command(struct vg_qmp *qmp, const char *command, struct vg_error **err)
{
	char line[256];
	int n = snprintf(line, sizeof(line), "{\"execute\": \"%s\"}\n", command);
	if (n < 0 || (size_t)n >= sizeof(line))
		return vg_error_set(err, EINVAL, "QMP command too long");
	if (send(qmp->fd, line, (size_t)n, MSG_NOSIGNAL) != n)
		return vg_error_set_errno(err, errno, "QMP send %s", command);
	return 0;
}

int vg_qmp_execute(struct vg_qmp *qmp, const char *command, int timeout_ms,
		   struct vg_error **err)
{
	long long deadline = now_ms() + timeout_ms;
	int ret = send_command(qmp, command, err);
	if (ret < 0)
		return ret;
	for (;;) {
		json_object *msg = read_message(qmp, deadline, err);
		if (msg == NULL)
			return vg_error_prefix(err, "QMP %s", command);
		json_object *error;
		bool done = json_object_object_get_ex(msg, "return", NULL);
		if (json_object_object_get_ex(msg, "error", &error)) {
			json_object *desc;
			json_object_object_get_ex(error, "desc", &desc);
			ret = vg_error_set(err, EIO, "QMP %s failed: %s", command,
					   desc ? json_object_get_string(desc) : "unknown error");
			done = true;
		}
		json_object_put(msg);
		if (done)
			return ret;
	}
}

int vg_qmp_connect(const char *path, int timeout_ms, struct vg_qmp *qmp, struct vg_error **err)
{
	memset(qmp, 0, sizeof(*qmp));
	qmp->fd = -1;
	long long deadline = now_ms() + timeout_ms;
	int ret;
	while ((ret = connect_unix(path, &qmp->fd)) < 0) {
		if ((ret != -ENOENT && ret != -ECONNREFUSED) || now_ms() >= deadline)
			return vg_error_set_errno(err, -ret, "connect to QMP socket %s", path);
		struct timespec pause = { 0, 10 * 1000 * 1000 };
		nanosleep(&pause, NULL);
	}
	json_object *greeting = read_message(qmp, deadline, err);
	bool is_qmp = greeting && json_object_object_get_ex(greeting, "QMP", NULL);
	json_object_put(greeting);
	if (!is_qmp) {
		vg_qmp_close(qmp);
		if (err && *err == NULL)
			vg_error_set(err, EPROTO, "%s did not greet with QMP", path);
		return vg_error_prefix(err, "QMP %s", path);
	}
	ret = vg_qmp_execute(qmp, "qmp_capabilities", (int)(deadline - now_ms() + 1), err);
	if (ret < 0)
		vg_qmp_close(qmp);
	return ret;
}

void vg_qmp_close(struct vg_qmp *qmp)
{
	if (qmp->fd >= 0)
		close(qmp->fd);
	qmp->fd = -1;
	qmp->len = 0;
}

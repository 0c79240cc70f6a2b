#include "lib/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int fsync_parent_dir(const char *path, struct vg_error **err)
{
	cleanup_free char *copy = strdup(path);
	if (copy == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	const char *dir = dirname(copy);
	cleanup_close int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return vg_error_set_errno(err, errno, "open directory %s", dir);
	if (fsync(dfd) < 0)
		return vg_error_set_errno(err, errno, "fsync directory %s", dir);
	return 0;
}

int vg_atomic_write(const char *path, const void *data, size_t len, mode_t mode,
		    struct vg_error **err)
{
	char tmp[PATH_MAX];
	int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return vg_error_set(err, ENAMETOOLONG, "path too long: %s", path);

	cleanup_close int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "create %s", tmp);
	int ret = write_all(fd, data, len);
	if (ret == 0 && fchmod(fd, mode) < 0)
		ret = -errno;
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (ret < 0) {
		unlink(tmp);
		return vg_error_set_errno(err, -ret, "write %s", tmp);
	}
	if (rename(tmp, path) < 0) {
		int saved = errno;
		unlink(tmp);
		return vg_error_set_errno(err, saved, "rename %s to %s", tmp, path);
	}
	return fsync_parent_dir(path, err);
}

int vg_atomic_write_str(const char *path, const char *text, mode_t mode, struct vg_error **err)
{
	return vg_atomic_write(path, text, strlen(text), mode, err);
}

int vg_read_file(const char *path, size_t max_len, char **out, size_t *out_len,
		 struct vg_error **err)
{
	cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "open %s", path);
	size_t cap = 4096, len = 0;
	cleanup_free char *buf = malloc(cap + 1);
	if (buf == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	for (;;) {
		if (len == cap) {
			if (cap >= max_len)
				return vg_error_set(err, EFBIG, "%s is larger than %zu bytes", path,
						    max_len);
			cap *= 2;
			char *grown = realloc(buf, cap + 1);
			if (grown == NULL)
				return vg_error_set(err, ENOMEM, "out of memory");
			buf = grown;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return vg_error_set_errno(err, errno, "read %s", path);
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	if (out_len)
		*out_len = len;
	*out = TAKE_PTR(buf);
	return 0;
}

#include "lib/sysfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"

int vg_sysfs_init(struct vg_sysfs *sysfs, const char *root, struct vg_error **err)
{
	if (root == NULL || root[0] == '\0')
		root = "/sys";
	size_t len = strlen(root);
	while (len > 1 && root[len - 1] == '/')
		len--;
	if (len >= sizeof(sysfs->root))
		return vg_error_set(err, ENAMETOOLONG, "sysfs root is too long: %s", root);
	memcpy(sysfs->root, root, len);
	sysfs->root[len] = '\0';
	struct stat st;
	if (stat(sysfs->root, &st) < 0)
		return vg_error_set_errno(err, errno, "sysfs root %s", sysfs->root);
	if (!S_ISDIR(st.st_mode))
		return vg_error_set(err, ENOTDIR, "sysfs root %s is not a directory", sysfs->root);
	return 0;
}

int vg_sysfs_path(const struct vg_sysfs *sysfs, char *buf, size_t size, struct vg_error **err,
		  const char *fmt, ...)
{
	int n = snprintf(buf, size, "%s/", sysfs->root);
	if (n < 0 || (size_t)n >= size)
		return vg_error_set(err, ENAMETOOLONG, "path too long under %s", sysfs->root);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(buf + n, size - (size_t)n, fmt, ap);
	va_end(ap);
	if (m < 0 || (size_t)m >= size - (size_t)n)
		return vg_error_set(err, ENAMETOOLONG, "path too long under %s", sysfs->root);
	return 0;
}

bool vg_sysfs_exists(const struct vg_sysfs *sysfs, const char *rel)
{
	char path[PATH_MAX];
	if (vg_sysfs_path(sysfs, path, sizeof(path), NULL, "%s", rel) < 0)
		return false;
	return access(path, F_OK) == 0;
}

static void trim_trailing_space(char *s, size_t len)
{
	while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == ' ' || s[len - 1] == '\t'))
		s[--len] = '\0';
}

int vg_sysfs_read(const struct vg_sysfs *sysfs, const char *rel, char *buf, size_t size,
		  struct vg_error **err)
{
	char path[PATH_MAX];
	int ret = vg_sysfs_path(sysfs, path, sizeof(path), err, "%s", rel);
	if (ret < 0)
		return ret;
	cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "read %s", path);
	ssize_t n;
	do {
		n = read(fd, buf, size - 1);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return vg_error_set_errno(err, errno, "read %s", path);
	buf[n] = '\0';
	trim_trailing_space(buf, (size_t)n);
	return 0;
}

int vg_parse_long(const char *s, long long *out, struct vg_error **err)
{
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s == '\0')
		return vg_error_set(err, EINVAL, "empty number");
	char *end = NULL;
	errno = 0;
	long long v = strtoll(s, &end, 0);
	if (errno != 0 || end == s)
		return vg_error_set(err, EINVAL, "'%.32s' is not a number", s);
	while (*end == ' ' || *end == '\n' || *end == '\t')
		end++;
	if (*end != '\0')
		return vg_error_set(err, EINVAL, "'%.32s' is not a number", s);
	*out = v;
	return 0;
}

int vg_sysfs_read_long(const struct vg_sysfs *sysfs, const char *rel, long long *out,
		       struct vg_error **err)
{
	char buf[64];
	int ret = vg_sysfs_read(sysfs, rel, buf, sizeof(buf), err);
	if (ret < 0)
		return ret;
	ret = vg_parse_long(buf, out, err);
	if (ret < 0)
		return vg_error_prefix(err, "%s/%s", sysfs->root, rel);
	return 0;
}

int vg_sysfs_link_name(const struct vg_sysfs *sysfs, const char *rel, char *buf, size_t size,
		       struct vg_error **err)
{
	char path[PATH_MAX], target[PATH_MAX];
	int ret = vg_sysfs_path(sysfs, path, sizeof(path), err, "%s", rel);
	if (ret < 0)
		return ret;
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return vg_error_set_errno(err, errno, "readlink %s", path);
	target[n] = '\0';
	const char *base = strrchr(target, '/');
	base = base ? base + 1 : target;
	if (strlen(base) >= size)
		return vg_error_set(err, ENAMETOOLONG, "link target too long: %s", path);
	strcpy(buf, base);
	return 0;
}

int vg_sysfs_resolve(const struct vg_sysfs *sysfs, const char *rel, char *buf, size_t size,
		     struct vg_error **err)
{
	char path[PATH_MAX], real_root[PATH_MAX], real[PATH_MAX];
	int ret = vg_sysfs_path(sysfs, path, sizeof(path), err, "%s", rel);
	if (ret < 0)
		return ret;
	if (realpath(sysfs->root, real_root) == NULL)
		return vg_error_set_errno(err, errno, "resolve %s", sysfs->root);
	if (realpath(path, real) == NULL)
		return vg_error_set_errno(err, errno, "resolve %s", path);
	size_t root_len = strlen(real_root);
	if (strncmp(real, real_root, root_len) != 0 || real[root_len] != '/')
		return vg_error_set(err, EXDEV, "%s resolves outside %s", path, sysfs->root);
	const char *inner = real + root_len + 1;
	if (strlen(inner) >= size)
		return vg_error_set(err, ENAMETOOLONG, "resolved path too long: %s", real);
	strcpy(buf, inner);
	return 0;
}

int vg_sysfs_write(const struct vg_sysfs *sysfs, const char *rel, const char *value,
		   struct vg_error **err)
{
	char path[PATH_MAX];
	int ret = vg_sysfs_path(sysfs, path, sizeof(path), err, "%s", rel);
	if (ret < 0)
		return ret;
	cleanup_close int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "open %s for writing", path);
	size_t len = strlen(value);
	ssize_t n;
	do {
		n = write(fd, value, len);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return vg_error_set_errno(err, errno, "write '%s' to %s", value, path);
	if ((size_t)n != len)
		return vg_error_set(err, EIO, "short write of '%s' to %s", value, path);
	return 0;
}

#include "tests/mock/fixture_tree.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"

/* ---- building -------------------------------------------------------------------------------- */

/*
 * Building never goes through the fake kernel, even when a test adds to a tree the mock is
 * already pointed at: creating driver_override would otherwise count as a write to it.
 */
static char *mock_pause(void)
{
	const char *root = getenv("VG_MOCK_SYSFS_ROOT");
	char *saved = NULL;
	if (root != NULL) {
		saved = strdup(root);
		assert_non_null(saved);
		unsetenv("VG_MOCK_SYSFS_ROOT");
	}
	return saved;
}

static void mock_resume(char *saved)
{
	if (saved != NULL)
		setenv("VG_MOCK_SYSFS_ROOT", saved, 1);
	free(saved);
}

void fixture_mkdirs(const char *path)
{
	char buf[PATH_MAX];
	int n = snprintf(buf, sizeof(buf), "%s", path);
	assert_true(n > 0 && (size_t)n < sizeof(buf));
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		assert_true(mkdir(buf, 0755) == 0 || errno == EEXIST);
		*p = '/';
	}
	assert_true(mkdir(buf, 0755) == 0 || errno == EEXIST);
}

void fixture_tree_path(const struct fixture_tree *t, char *buf, const char *fmt, ...)
{
	int n = snprintf(buf, PATH_MAX, "%s/", t->root);
	assert_true(n > 0 && n < PATH_MAX);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(buf + n, (size_t)(PATH_MAX - n), fmt, ap);
	va_end(ap);
	assert_true(m >= 0 && m < PATH_MAX - n);
}

void fixture_put_file(const char *path, const char *content)
{
	cleanup_close int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
}

void fixture_put_link(const char *target, const char *link)
{
	assert_int_equal(symlink(target, link), 0);
}

/* printf into a PATH_MAX buffer, asserting that nothing was cut. */
static void format_into(char *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void format_into(char *buf, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, PATH_MAX, fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && n < PATH_MAX);
}

void fixture_tree_add_driver(const struct fixture_tree *t, const char *name)
{
	char *paused = mock_pause();
	static const char *const files[] = { "bind", "unbind", "new_id", "remove_id" };
	char path[PATH_MAX];
	fixture_tree_path(t, path, "bus/pci/drivers/%s", name);
	fixture_mkdirs(path);
	for (size_t i = 0; i < VG_ARRAY_SIZE(files); i++) {
		fixture_tree_path(t, path, "bus/pci/drivers/%s/%s", name, files[i]);
		fixture_put_file(path, "");
	}
	mock_resume(paused);
}

void fixture_tree_remove_driver(const struct fixture_tree *t, const char *name)
{
	char *paused = mock_pause();
	static const char *const files[] = { "bind", "unbind", "new_id", "remove_id" };
	char path[PATH_MAX];
	for (size_t i = 0; i < VG_ARRAY_SIZE(files); i++) {
		fixture_tree_path(t, path, "bus/pci/drivers/%s/%s", name, files[i]);
		assert_int_equal(unlink(path), 0);
	}
	fixture_tree_path(t, path, "bus/pci/drivers/%s", name);
	assert_int_equal(rmdir(path), 0); /* fails while a device is still bound to it */
	mock_resume(paused);
}

/* "../" once per component of rel, so a link placed in root/rel climbs back to the root. */
static void climb_to_root(const char *rel, char *buf, size_t size)
{
	size_t components = 1;
	for (const char *p = rel; *p; p++)
		components += *p == '/';
	assert_true(components * 3 < size);
	for (size_t i = 0; i < components; i++)
		memcpy(buf + i * 3, "../", 4);
}

void fixture_tree_add_device(const struct fixture_tree *t, const struct fixture_device *d)
{
	char *paused = mock_pause();
	const char *parent = d->parent ? d->parent : FIXTURE_BRIDGE_DIR;
	char dir[PATH_MAX], up[64], path[PATH_MAX], target[PATH_MAX];
	format_into(dir, "%s/%s", parent, d->bdf); /* relative to the root */
	climb_to_root(dir, up, sizeof(up));

	fixture_tree_path(t, path, "%s", dir);
	fixture_mkdirs(path);
	fixture_tree_path(t, path, "%s/driver_override", dir);
	format_into(target, "%s\n", d->override ? d->override : "(null)");
	fixture_put_file(path, target);
	fixture_tree_path(t, path, "%s/class", dir);
	format_into(target, "0x%06x\n", d->class_code);
	fixture_put_file(path, target);
	fixture_tree_path(t, path, "%s/reset", dir);
	fixture_put_file(path, "");
	fixture_tree_path(t, path, "bus/pci/devices/%s", d->bdf);
	format_into(target, "../../../%s", dir);
	fixture_put_link(target, path);
	if (d->native != NULL) {
		fixture_tree_path(t, path, "%s/.mock_native_driver", dir);
		fixture_put_file(path, d->native);
	}
	if (d->driver != NULL) {
		fixture_tree_path(t, path, "%s/driver", dir);
		format_into(target, "%sbus/pci/drivers/%s", up, d->driver);
		fixture_put_link(target, path);
		fixture_tree_path(t, path, "bus/pci/drivers/%s/%s", d->driver, d->bdf);
		format_into(target, "../../../../%s", dir);
		fixture_put_link(target, path);
	}
	if (d->driver != NULL && strcmp(d->driver, "vfio-pci") == 0 && d->group >= 0) {
		format_into(path, "%s/vfio", t->dev); /* the group node the kernel made for it */
		fixture_mkdirs(path);
		format_into(path, "%s/vfio/%d", t->dev, d->group);
		fixture_put_file(path, "");
	}
	if (d->group >= 0) {
		fixture_tree_path(t, path, "kernel/iommu_groups/%d/devices", d->group);
		fixture_mkdirs(path);
		fixture_tree_path(t, path, "kernel/iommu_groups/%d/devices/%s", d->group, d->bdf);
		format_into(target, "../../../../%s", dir);
		fixture_put_link(target, path);
		fixture_tree_path(t, path, "%s/iommu_group", dir);
		format_into(target, "%skernel/iommu_groups/%d", up, d->group);
		fixture_put_link(target, path);
	}
	mock_resume(paused);
}

void fixture_tree_make(struct fixture_tree *t)
{
	*t = (struct fixture_tree){ 0 };
	int n = snprintf(t->dir, sizeof(t->dir), "/tmp/vg-fixture.XXXXXX");
	assert_true(n > 0 && (size_t)n < sizeof(t->dir));
	assert_non_null(mkdtemp(t->dir));
	n = snprintf(t->root, sizeof(t->root), "%s/sys", t->dir);
	assert_true(n > 0 && (size_t)n < sizeof(t->root));
	n = snprintf(t->dev, sizeof(t->dev), "%s/dev", t->dir);
	assert_true(n > 0 && (size_t)n < sizeof(t->dev));
	n = snprintf(t->log, sizeof(t->log), "%s/mock.log", t->dir);
	assert_true(n > 0 && (size_t)n < sizeof(t->log));
	char path[PATH_MAX];
	fixture_tree_path(t, path, "bus/pci/devices");
	fixture_mkdirs(path);
	fixture_tree_path(t, path, "bus/pci/drivers_probe");
	fixture_put_file(path, "");
	fixture_mkdirs(t->dev);
	assert_int_equal(vg_sysfs_init(&t->sysfs, t->root, NULL), 0);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void fixture_tree_remove(struct fixture_tree *t)
{
	if (t->dir[0] != '\0')
		nftw(t->dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
	t->dir[0] = '\0';
}

void fixture_mock_env_clear(void)
{
	static const char *const vars[] = { "VG_MOCK_SYSFS_ROOT", "VG_MOCK_DEV_ROOT", "VG_MOCK_LOG",
					    "VG_MOCK_FAIL", "VG_MOCK_HANG_SECONDS" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(vars); i++)
		unsetenv(vars[i]);
}

void fixture_mock_env_use(const struct fixture_tree *t)
{
	setenv("VG_MOCK_SYSFS_ROOT", t->root, 1);
	setenv("VG_MOCK_DEV_ROOT", t->dev, 1);
	setenv("VG_MOCK_LOG", t->log, 1);
}

/* ---- looking --------------------------------------------------------------------------------- */

const char *fixture_driver_of(const struct fixture_tree *t, const char *bdf)
{
	static char name[NAME_MAX + 1];
	char path[PATH_MAX], target[PATH_MAX];
	fixture_tree_path(t, path, "bus/pci/devices/%s/driver", bdf);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n < 0) {
		assert_int_equal(errno, ENOENT);
		return "";
	}
	target[n] = '\0';
	/* The link must resolve to the driver's directory, as the kernel's does. */
	char resolved[PATH_MAX], expected[PATH_MAX + NAME_MAX + 32], real_root[PATH_MAX];
	assert_non_null(realpath(path, resolved));
	assert_non_null(realpath(t->root, real_root));
	int m = snprintf(name, sizeof(name), "%s", strrchr(target, '/') + 1);
	assert_true(m > 0 && (size_t)m < sizeof(name));
	m = snprintf(expected, sizeof(expected), "%s/bus/pci/drivers/%s", real_root, name);
	assert_true(m > 0 && (size_t)m < sizeof(expected));
	assert_string_equal(resolved, expected);
	assert_true(strncmp(target, "../", 3) == 0);
	return name;
}

bool fixture_driver_lists(const struct fixture_tree *t, const char *driver, const char *bdf)
{
	char path[PATH_MAX], resolved[PATH_MAX], device[PATH_MAX], dev_resolved[PATH_MAX];
	fixture_tree_path(t, path, "bus/pci/drivers/%s/%s", driver, bdf);
	struct stat st;
	if (lstat(path, &st) < 0)
		return false;
	assert_true(S_ISLNK(st.st_mode));
	assert_non_null(realpath(path, resolved));
	fixture_tree_path(t, device, "bus/pci/devices/%s", bdf);
	assert_non_null(realpath(device, dev_resolved));
	assert_string_equal(resolved, dev_resolved);
	return true;
}

const char *fixture_file_content(const char *path)
{
	static char buf[4096];
	cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	assert_true(n >= 0);
	buf[n] = '\0';
	return buf;
}

const char *fixture_override_of(const struct fixture_tree *t, const char *bdf)
{
	static char buf[256];
	char path[PATH_MAX];
	fixture_tree_path(t, path, "bus/pci/devices/%s/driver_override", bdf);
	const char *content = fixture_file_content(path);
	assert_non_null(content);
	int n = snprintf(buf, sizeof(buf), "%s", content);
	assert_true(n >= 0 && (size_t)n < sizeof(buf));
	return buf;
}

bool fixture_vfio_node_exists(const struct fixture_tree *t, int group)
{
	char path[PATH_MAX];
	format_into(path, "%s/vfio/%d", t->dev, group);
	return access(path, F_OK) == 0;
}

const char *fixture_log(const struct fixture_tree *t)
{
	const char *log = fixture_file_content(t->log);
	return log ? log : "";
}

static int skip_dots(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

/* The sorted entries of a directory; 0 entries when it does not exist. */
static int list_dir(const char *path, struct dirent ***out)
{
	int n = scandir(path, out, skip_dots, alphasort);
	if (n < 0) {
		assert_int_equal(errno, ENOENT);
		*out = NULL;
		return 0;
	}
	return n;
}

static void free_list(struct dirent **list, int n)
{
	for (int i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

static void append(char *buf, size_t size, size_t *used, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void append(char *buf, size_t size, size_t *used, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf + *used, size - *used, fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && (size_t)n < size - *used); /* a bigger buffer, not a cut snapshot */
	*used += (size_t)n;
}

void fixture_tree_snapshot(const struct fixture_tree *t, char *buf, size_t size)
{
	char path[PATH_MAX];
	size_t used = 0;
	buf[0] = '\0';
	struct dirent **devices, **drivers, **nodes;
	fixture_tree_path(t, path, "bus/pci/devices");
	int n_devices = list_dir(path, &devices);
	fixture_tree_path(t, path, "bus/pci/drivers");
	int n_drivers = list_dir(path, &drivers);
	for (int i = 0; i < n_devices; i++) {
		const char *bdf = devices[i]->d_name;
		append(buf, size, &used, "%s=%s override=", bdf, fixture_driver_of(t, bdf));
		append(buf, size, &used, "%s", fixture_override_of(t, bdf));
		for (int d = 0; d < n_drivers; d++)
			if (fixture_driver_lists(t, drivers[d]->d_name, bdf))
				append(buf, size, &used, " in:%s", drivers[d]->d_name);
		append(buf, size, &used, "\n");
	}
	format_into(path, "%s/vfio", t->dev);
	int n_nodes = list_dir(path, &nodes);
	append(buf, size, &used, "vfio:");
	for (int i = 0; i < n_nodes; i++)
		append(buf, size, &used, " %s", nodes[i]->d_name);
	append(buf, size, &used, "\n");
	free_list(devices, n_devices);
	free_list(drivers, n_drivers);
	free_list(nodes, n_nodes);
}

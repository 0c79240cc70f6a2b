/*
 * An LD_PRELOAD stand-in for the kernel's PCI driver core on a fake sysfs tree.
 *
 * Writes to bind, unbind, drivers_probe and driver_override under VG_MOCK_SYSFS_ROOT are acted
 * out at write(2) time, as the kernel does: the `driver` symlinks move, <group> nodes appear and
 * vanish under VG_MOCK_DEV_ROOT/vfio, and errors come back from write(2) itself. Every other file,
 * and every read, passes through untouched. README.md holds the environment contract.
 *
 * Built without sanitizers on purpose: it is preloaded into sanitized and plain processes alike.
 */
#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define VG_EXPORT __attribute__((visibility("default")))

/* glibc's fortified entry points; only _FORTIFY_SOURCE builds declare them. */
VG_EXPORT int __open_2(const char *path, int flags);
VG_EXPORT int __open64_2(const char *path, int flags);
VG_EXPORT int __openat_2(int dirfd, const char *path, int flags);
VG_EXPORT int __openat64_2(int dirfd, const char *path, int flags);

#define VFIO_DRIVER "vfio-pci"
#define FAIL_COUNTS_FILE ".mock_fail_counts"
#define NATIVE_DRIVER_FILE ".mock_native_driver"
#define DEFAULT_HANG_SECONDS 30
#define MAX_HANG_SECONDS 3600
#define VALUE_MAX 256
#define FDTAB_SIZE 64

/* ---- the real libc functions ----------------------------------------------------------------- */

static struct {
	int (*openat)(int, const char *, int, ...);
	ssize_t (*write)(int, const void *, size_t);
	int (*close)(int);
} real;

static pthread_once_t real_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t fdtab_lock = PTHREAD_MUTEX_INITIALIZER;

static void fdtab_lock_for_fork(void)
{
	pthread_mutex_lock(&fdtab_lock);
}

static void fdtab_unlock_after_fork(void)
{
	pthread_mutex_unlock(&fdtab_lock);
}

static void *next_symbol(const char *name)
{
	void *sym = dlsym(RTLD_NEXT, name);
	if (sym == NULL)
		abort(); /* nothing can pass through without it, and there is no one to tell */
	return sym;
}

static void resolve_real(void)
{
	real.openat = next_symbol("openat");
	real.write = next_symbol("write");
	real.close = next_symbol("close");
	/* A fork while another thread holds the table lock must not leave the child deadlocked. */
	pthread_atfork(fdtab_lock_for_fork, fdtab_unlock_after_fork, fdtab_unlock_after_fork);
}

static void ensure_real(void)
{
	pthread_once(&real_once, resolve_real);
}

/* ---- small helpers --------------------------------------------------------------------------- */

static int join_path(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int join_path(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return (n < 0 || (size_t)n >= size) ? -ENAMETOOLONG : 0;
}

static void trim_trailing_space(char *s)
{
	size_t len = strlen(s);
	while (len > 0 && isspace((unsigned char)s[len - 1]))
		s[--len] = '\0';
}

static int read_attr(const char *path, char *buf, size_t size)
{
	int fd = real.openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, size - 1);
	int saved = errno;
	real.close(fd);
	if (n < 0)
		return -saved;
	buf[n] = '\0';
	trim_trailing_space(buf);
	return 0;
}

static int write_file(const char *path, const char *content, size_t len)
{
	int fd = real.openat(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	ssize_t n = real.write(fd, content, len);
	int saved = errno;
	real.close(fd);
	if (n < 0)
		return -saved;
	return (size_t)n == len ? 0 : -EIO;
}

static int link_name(const char *path, char *buf, size_t size)
{
	char target[PATH_MAX];
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -errno;
	target[n] = '\0';
	const char *base = strrchr(target, '/');
	base = base ? base + 1 : target;
	if (strlen(base) >= size)
		return -ENAMETOOLONG;
	memcpy(buf, base, strlen(base) + 1);
	return 0;
}

static bool is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static const char *errno_name(int err)
{
	const char *name = strerrorname_np(err);
	return name ? name : "EUNKNOWN";
}

static int errno_from_name(const char *name)
{
	char *end = NULL;
	long n = strtol(name, &end, 10);
	if (end != name && *end == '\0')
		return (n > 0 && n < 4096) ? (int)n : 0;
	for (int err = 1; err < 256; err++) {
		const char *known = strerrorname_np(err);
		if (known != NULL && strcmp(known, name) == 0)
			return err;
	}
	return 0;
}

/* Length of a PCI address ("0000:01:00.0", domains of 4+ hex digits) at the start of s, or 0. */
static size_t bdf_span(const char *s)
{
	size_t i = 0;
	while (isxdigit((unsigned char)s[i]))
		i++;
	if (i < 4 || s[i] != ':')
		return 0;
	i++;
	for (int k = 0; k < 2; k++, i++)
		if (!isxdigit((unsigned char)s[i]))
			return 0;
	if (s[i++] != ':')
		return 0;
	for (int k = 0; k < 2; k++, i++)
		if (!isxdigit((unsigned char)s[i]))
			return 0;
	if (s[i++] != '.')
		return 0;
	if (s[i] < '0' || s[i] > '7')
		return 0;
	return i + 1;
}

/* A written device name may only name a device: no slashes, no dots-up. */
static bool is_device_name(const char *s)
{
	size_t len = strlen(s);
	return len > 0 && bdf_span(s) == len;
}

/* ---- the fd table: which open fds are control files ------------------------------------------ */

enum control_kind {
	CONTROL_BIND,
	CONTROL_UNBIND,
	CONTROL_NEW_ID,
	CONTROL_REMOVE_ID,
	CONTROL_PROBE,
	CONTROL_OVERRIDE,
};

struct control_file {
	bool used;
	int fd;
	dev_t dev;
	ino_t ino;
	enum control_kind kind;
	char root[PATH_MAX];      /* the resolved VG_MOCK_SYSFS_ROOT at open time */
	char name[NAME_MAX + 1];  /* driver name (bind, unbind, *_id) or BDF (driver_override) */
	char path[PATH_MAX];      /* the resolved control file */
};

static struct control_file fdtab[FDTAB_SIZE];
static int fdtab_count; /* read without the lock on the fast path, hence the atomics */

static void fdtab_forget_locked(int fd)
{
	for (size_t i = 0; i < FDTAB_SIZE; i++) {
		if (fdtab[i].used && fdtab[i].fd == fd) {
			fdtab[i].used = false;
			__atomic_sub_fetch(&fdtab_count, 1, __ATOMIC_RELEASE);
		}
	}
}

static void fdtab_forget(int fd)
{
	if (__atomic_load_n(&fdtab_count, __ATOMIC_ACQUIRE) == 0)
		return;
	pthread_mutex_lock(&fdtab_lock);
	fdtab_forget_locked(fd);
	pthread_mutex_unlock(&fdtab_lock);
}

static int fdtab_add(const struct control_file *cf)
{
	int ret = -EMFILE;
	pthread_mutex_lock(&fdtab_lock);
	fdtab_forget_locked(cf->fd);
	for (size_t i = 0; i < FDTAB_SIZE; i++) {
		if (!fdtab[i].used) {
			fdtab[i] = *cf;
			fdtab[i].used = true;
			__atomic_add_fetch(&fdtab_count, 1, __ATOMIC_RELEASE);
			ret = 0;
			break;
		}
	}
	pthread_mutex_unlock(&fdtab_lock);
	return ret;
}

static bool fdtab_find(int fd, struct control_file *out)
{
	if (__atomic_load_n(&fdtab_count, __ATOMIC_ACQUIRE) == 0)
		return false;
	bool found = false;
	pthread_mutex_lock(&fdtab_lock);
	for (size_t i = 0; i < FDTAB_SIZE; i++) {
		if (fdtab[i].used && fdtab[i].fd == fd) {
			*out = fdtab[i];
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&fdtab_lock);
	return found;
}

/* ---- recognising control files --------------------------------------------------------------- */

static bool classify_driver_file(const char *rel, struct control_file *cf)
{
	static const struct {
		const char *file;
		enum control_kind kind;
	} files[] = {
		{ "bind", CONTROL_BIND },
		{ "unbind", CONTROL_UNBIND },
		{ "new_id", CONTROL_NEW_ID },
		{ "remove_id", CONTROL_REMOVE_ID },
	};
	const char *slash = strchr(rel, '/');
	if (slash == NULL || slash == rel || (size_t)(slash - rel) > NAME_MAX)
		return false;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if (strcmp(slash + 1, files[i].file) == 0) {
			memcpy(cf->name, rel, (size_t)(slash - rel));
			cf->name[slash - rel] = '\0';
			cf->kind = files[i].kind;
			return true;
		}
	}
	return false;
}

static bool classify_override_file(const char *rel, struct control_file *cf)
{
	static const char suffix[] = "/driver_override";
	size_t len = strlen(rel);
	if (len <= sizeof(suffix) - 1 || strcmp(rel + len - (sizeof(suffix) - 1), suffix) != 0)
		return false;
	size_t dir_end = len - (sizeof(suffix) - 1);
	size_t start = dir_end;
	while (start > 0 && rel[start - 1] != '/')
		start--;
	size_t name_len = dir_end - start;
	if (name_len == 0 || name_len > NAME_MAX)
		return false;
	memcpy(cf->name, rel + start, name_len);
	cf->name[name_len] = '\0';
	cf->kind = CONTROL_OVERRIDE;
	return is_device_name(cf->name);
}

/* Decides from the fully resolved path, so devices/<BDF>/driver/unbind counts as the driver's. */
static bool classify_resolved(const char *root, const char *resolved, struct control_file *cf)
{
	size_t rlen = strlen(root);
	if (strncmp(resolved, root, rlen) != 0 || resolved[rlen] != '/')
		return false;
	const char *rel = resolved + rlen + 1;
	static const char drivers[] = "bus/pci/drivers/";
	bool known;
	if (strcmp(rel, "bus/pci/drivers_probe") == 0) {
		cf->kind = CONTROL_PROBE;
		cf->name[0] = '\0';
		known = true;
	} else if (strncmp(rel, drivers, sizeof(drivers) - 1) == 0) {
		known = classify_driver_file(rel + sizeof(drivers) - 1, cf);
	} else {
		known = classify_override_file(rel, cf);
	}
	if (!known)
		return false;
	memcpy(cf->root, root, rlen + 1);
	memcpy(cf->path, resolved, strlen(resolved) + 1);
	return true;
}

static bool classify_open(int dirfd, const char *path, struct control_file *cf)
{
	const char *root_env = getenv("VG_MOCK_SYSFS_ROOT");
	if (root_env == NULL || root_env[0] == '\0')
		return false;
	char root[PATH_MAX], resolved[PATH_MAX];
	if (realpath(root_env, root) == NULL)
		return false;
	if (path[0] == '/' || dirfd == AT_FDCWD) {
		if (realpath(path, resolved) == NULL)
			return false;
	} else {
		char via_proc[PATH_MAX];
		if (join_path(via_proc, sizeof(via_proc), "/proc/self/fd/%d/%s", dirfd, path) < 0)
			return false;
		if (realpath(via_proc, resolved) == NULL)
			return false;
	}
	return classify_resolved(root, resolved, cf);
}

static bool opens_for_write(int flags)
{
	int acc = flags & O_ACCMODE;
	return acc == O_WRONLY || acc == O_RDWR;
}

static bool open_takes_mode(int flags)
{
	return (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE;
}

static int mock_openat(int dirfd, const char *path, int flags, mode_t mode)
{
	ensure_real();
	int saved = errno;
	struct control_file cf = { 0 };
	bool control = opens_for_write(flags) && classify_open(dirfd, path, &cf);
	errno = saved;
	if (!control) {
		int fd = real.openat(dirfd, path, flags, mode);
		if (fd >= 0)
			fdtab_forget(fd); /* a stale entry from an fd closed behind our back */
		return fd;
	}
	/* sysfs ignores O_TRUNC; a truncated driver_override would read back empty. */
	int fd = real.openat(dirfd, path, flags & ~O_TRUNC, mode);
	if (fd < 0)
		return fd;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		saved = errno;
		real.close(fd);
		errno = saved;
		return -1;
	}
	cf.fd = fd;
	cf.dev = st.st_dev;
	cf.ino = st.st_ino;
	if (fdtab_add(&cf) < 0) {
		real.close(fd);
		errno = EMFILE;
		return -1;
	}
	errno = saved;
	return fd;
}

/* ---- the log --------------------------------------------------------------------------------- */

static void log_action(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void log_action(const char *fmt, ...)
{
	const char *path = getenv("VG_MOCK_LOG");
	if (path == NULL || path[0] == '\0')
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	size_t len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
	line[len++] = '\n';
	int fd = real.openat(AT_FDCWD, path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	(void)!real.write(fd, line, len);
	real.close(fd);
}

/* ---- failure injection ----------------------------------------------------------------------- */

struct injection {
	int err;
	bool hang;
};

struct fail_spec {
	const char *op;
	const char *bdf; /* "*" matches any */
	int err;
	bool hang;
	long nth; /* 0: every matching call */
};

static bool is_known_op(const char *op)
{
	static const char *const ops[] = { "bind",  "unbind", "override",
					   "probe", "new_id", "remove_id" };
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strcmp(op, ops[i]) == 0)
			return true;
	return false;
}

static int parse_errno_token(char *tok, struct fail_spec *spec)
{
	if (strcmp(tok, "hang") == 0) {
		spec->hang = true;
		spec->err = EIO;
		return 0;
	}
	spec->err = errno_from_name(tok);
	return spec->err > 0 ? 0 : -EINVAL;
}

static int parse_nth(const char *s, struct fail_spec *spec)
{
	char *end = NULL;
	long n = strtol(s, &end, 10);
	if (end == s || *end != '\0' || n < 1)
		return -EINVAL;
	spec->nth = n;
	return 0;
}

/* "op:BDF[:ERRNO|:hang][@N]", BDF may be "*". Parses in place. */
static int parse_fail_spec(char *entry, struct fail_spec *spec)
{
	*spec = (struct fail_spec){ .err = EIO };
	char *colon = strchr(entry, ':');
	if (colon == NULL)
		return -EINVAL;
	*colon = '\0';
	spec->op = entry;
	if (!is_known_op(spec->op))
		return -EINVAL;
	char *rest = colon + 1;
	size_t bdf_len = rest[0] == '*' ? 1 : bdf_span(rest);
	if (bdf_len == 0)
		return -EINVAL;
	char sep = rest[bdf_len];
	rest[bdf_len] = '\0';
	spec->bdf = rest;
	rest += bdf_len + 1;
	if (sep == '\0')
		return 0;
	if (sep == '@')
		return parse_nth(rest, spec);
	if (sep != ':')
		return -EINVAL;
	char *at = strchr(rest, '@');
	if (at != NULL)
		*at = '\0';
	if (parse_errno_token(rest, spec) < 0)
		return -EINVAL;
	return at ? parse_nth(at + 1, spec) : 0;
}

static int counts_find_line(const char *counts, const char *key, const char **line, size_t *len)
{
	size_t klen = strlen(key);
	for (const char *p = counts; *p != '\0';) {
		const char *eol = strchr(p, '\n');
		size_t l = eol ? (size_t)(eol - p) + 1 : strlen(p);
		if (l > klen && strncmp(p, key, klen) == 0 && p[klen] == ' ') {
			*line = p;
			*len = l;
			return atoi(p + klen + 1);
		}
		p += l;
	}
	*line = NULL;
	*len = 0;
	return 0;
}

/*
 * Counts one more matching call of this entry and returns the new count. The counts live in the
 * tree, under the tree lock, so "the Nth call" holds across every process acting on that tree.
 */
static int count_matching_call(const char *root, const char *key)
{
	char path[PATH_MAX];
	int ret = join_path(path, sizeof(path), "%s/" FAIL_COUNTS_FILE, root);
	if (ret < 0)
		return ret;
	char counts[8192] = "";
	ret = read_attr(path, counts, sizeof(counts) - 1); /* room for the newline put back below */
	if (ret < 0 && ret != -ENOENT)
		return ret;
	size_t used = strlen(counts);
	if (used > 0) {
		counts[used++] = '\n';
		counts[used] = '\0';
	}
	const char *line;
	size_t line_len;
	int count = counts_find_line(counts, key, &line, &line_len) + 1;
	char updated[sizeof(counts) + 512];
	size_t head = line ? (size_t)(line - counts) : strlen(counts);
	const char *tail = line ? line + line_len : "";
	int n = snprintf(updated, sizeof(updated), "%.*s%s%s %d\n", (int)head, counts, tail, key,
			 count);
	if (n < 0 || (size_t)n >= sizeof(updated))
		return -ENOSPC;
	ret = write_file(path, updated, (size_t)n);
	return ret < 0 ? ret : count;
}

/* Returns 1 and fills *inj when a VG_MOCK_FAIL entry fires for this call, 0 when none does. */
static int injection_lookup(const char *root, const char *op, const char *bdf,
			    struct injection *inj)
{
	const char *env = getenv("VG_MOCK_FAIL");
	if (env == NULL || env[0] == '\0')
		return 0;
	char specs[1024];
	if (strlen(env) >= sizeof(specs))
		return -EINVAL;
	memcpy(specs, env, strlen(env) + 1);
	bool fired = false;
	char *save = NULL;
	for (char *entry = strtok_r(specs, ", ", &save); entry != NULL;
	     entry = strtok_r(NULL, ", ", &save)) {
		char key[sizeof(specs)];
		memcpy(key, entry, strlen(entry) + 1);
		struct fail_spec spec;
		if (parse_fail_spec(entry, &spec) < 0) {
			fprintf(stderr, "vg_sysfs_mock: bad VG_MOCK_FAIL entry '%s'\n", key);
			return -EINVAL;
		}
		bool any_device = strcmp(spec.bdf, "*") == 0;
		if (strcmp(spec.op, op) != 0 || (!any_device && strcmp(spec.bdf, bdf) != 0))
			continue;
		bool fires = true;
		if (spec.nth > 0) {
			int count = count_matching_call(root, key);
			if (count < 0)
				return count;
			fires = count == spec.nth;
		}
		if (fires && !fired) {
			*inj = (struct injection){ .err = spec.err, .hang = spec.hang };
			fired = true; /* keep going: later @N entries still count this call */
		}
	}
	return fired ? 1 : 0;
}

static void hang_for_a_while(void)
{
	long seconds = DEFAULT_HANG_SECONDS;
	const char *env = getenv("VG_MOCK_HANG_SECONDS");
	if (env != NULL && env[0] != '\0') {
		char *end = NULL;
		long v = strtol(env, &end, 10);
		if (end != env && *end == '\0' && v >= 0)
			seconds = v < MAX_HANG_SECONDS ? v : MAX_HANG_SECONDS;
	}
	/* Like a write stuck on the device lock: signals do not cut it short. */
	struct timespec left = { .tv_sec = seconds };
	while (nanosleep(&left, &left) < 0 && errno == EINTR)
		;
}

/* ---- the device model ------------------------------------------------------------------------ */

struct device {
	char bdf[NAME_MAX + 1];
	char dir[PATH_MAX]; /* resolved device directory */
	char driver[NAME_MAX + 1]; /* "" when unbound */
	char override[NAME_MAX + 1]; /* "" when unset */
	char group[NAME_MAX + 1]; /* "" without an IOMMU group */
};

static int device_load(const char *root, const char *bdf, struct device *dev)
{
	if (!is_device_name(bdf) || strlen(bdf) > NAME_MAX)
		return -ENODEV;
	char path[PATH_MAX];
	int ret = join_path(path, sizeof(path), "%s/bus/pci/devices/%s", root, bdf);
	if (ret < 0)
		return -ENODEV;
	*dev = (struct device){ 0 };
	memcpy(dev->bdf, bdf, strlen(bdf) + 1);
	if (realpath(path, dev->dir) == NULL || !is_dir(dev->dir))
		return -ENODEV;
	if (join_path(path, sizeof(path), "%s/driver", dev->dir) == 0 &&
	    link_name(path, dev->driver, sizeof(dev->driver)) < 0)
		dev->driver[0] = '\0';
	if (join_path(path, sizeof(path), "%s/iommu_group", dev->dir) == 0 &&
	    link_name(path, dev->group, sizeof(dev->group)) < 0)
		dev->group[0] = '\0';
	if (join_path(path, sizeof(path), "%s/driver_override", dev->dir) == 0 &&
	    (read_attr(path, dev->override, sizeof(dev->override)) < 0 ||
	     strcmp(dev->override, "(null)") == 0))
		dev->override[0] = '\0';
	return 0;
}

static bool driver_loaded(const char *root, const char *driver)
{
	char path[PATH_MAX];
	return join_path(path, sizeof(path), "%s/bus/pci/drivers/%s", root, driver) == 0 &&
	       is_dir(path);
}

/* "../" once per component of from_dir below root, then to_rel: how the kernel writes links. */
static int relative_target(const char *root, const char *from_dir, const char *to_rel, char *buf,
			   size_t size)
{
	const char *rel = from_dir + strlen(root);
	size_t used = 0;
	for (const char *p = rel; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		if (used + 3 >= size)
			return -ENAMETOOLONG;
		memcpy(buf + used, "../", 3);
		used += 3;
	}
	buf[used] = '\0';
	return join_path(buf + used, size - used, "%s", to_rel);
}

static int vfio_node_path(const char *group, char *buf, size_t size)
{
	const char *dev_root = getenv("VG_MOCK_DEV_ROOT");
	if (dev_root == NULL || dev_root[0] == '\0')
		return -ENOENT;
	return join_path(buf, size, "%s/vfio/%s", dev_root, group);
}

static int vfio_node_create(const char *group)
{
	char path[PATH_MAX];
	int ret = vfio_node_path(group, path, sizeof(path));
	if (ret == -ENOENT)
		return 0; /* no device root: /dev is not being acted out */
	if (ret < 0)
		return ret;
	char *slash = strrchr(path, '/');
	*slash = '\0';
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return -errno;
	*slash = '/';
	return write_file(path, "", 0);
}

static void vfio_node_remove(const char *group)
{
	char path[PATH_MAX];
	if (vfio_node_path(group, path, sizeof(path)) == 0)
		unlink(path);
}

/* Whether another device of this IOMMU group is still bound to vfio-pci. */
static bool vfio_group_in_use(const char *root, const char *group, const char *except_bdf)
{
	char dir_path[PATH_MAX];
	if (join_path(dir_path, sizeof(dir_path), "%s/bus/pci/drivers/" VFIO_DRIVER, root) < 0)
		return false;
	DIR *dir = opendir(dir_path);
	if (dir == NULL)
		return false;
	bool in_use = false;
	struct dirent *de;
	while (!in_use && (de = readdir(dir)) != NULL) {
		if (!is_device_name(de->d_name) || strcmp(de->d_name, except_bdf) == 0)
			continue;
		char path[PATH_MAX], other[NAME_MAX + 1];
		if (join_path(path, sizeof(path), "%s/%s/iommu_group", dir_path, de->d_name) == 0 &&
		    link_name(path, other, sizeof(other)) == 0)
			in_use = strcmp(other, group) == 0;
	}
	closedir(dir);
	return in_use;
}

/* The driver's probe: only vfio-pci can refuse, when there is no IOMMU group (-EINVAL). */
static int driver_probe(const struct device *dev, const char *driver)
{
	if (strcmp(driver, VFIO_DRIVER) != 0)
		return 0;
	if (dev->group[0] == '\0')
		return -EINVAL;
	return vfio_node_create(dev->group);
}

static int device_attach(const char *root, const struct device *dev, const char *driver)
{
	int ret = driver_probe(dev, driver);
	if (ret < 0)
		return ret;
	char link[PATH_MAX], target[PATH_MAX], to_rel[PATH_MAX], driver_dir[PATH_MAX];
	if (join_path(to_rel, sizeof(to_rel), "bus/pci/drivers/%s", driver) < 0 ||
	    relative_target(root, dev->dir, to_rel, target, sizeof(target)) < 0 ||
	    join_path(link, sizeof(link), "%s/driver", dev->dir) < 0)
		return -ENAMETOOLONG;
	if (symlink(target, link) < 0)
		return -errno;
	if (join_path(driver_dir, sizeof(driver_dir), "%s/%s", root, to_rel) < 0 ||
	    relative_target(root, driver_dir, dev->dir + strlen(root) + 1, target,
			    sizeof(target)) < 0 ||
	    join_path(link, sizeof(link), "%s/%s", driver_dir, dev->bdf) < 0)
		return -ENAMETOOLONG;
	if (symlink(target, link) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static void device_detach(const char *root, const struct device *dev)
{
	char path[PATH_MAX];
	if (join_path(path, sizeof(path), "%s/driver", dev->dir) == 0)
		unlink(path);
	if (join_path(path, sizeof(path), "%s/bus/pci/drivers/%s/%s", root, dev->driver,
		      dev->bdf) == 0)
		unlink(path);
	if (strcmp(dev->driver, VFIO_DRIVER) == 0 && dev->group[0] != '\0' &&
	    !vfio_group_in_use(root, dev->group, dev->bdf))
		vfio_node_remove(dev->group);
}

/* ---- the control files ----------------------------------------------------------------------- */

struct outcome {
	char driver[NAME_MAX + 1]; /* the second log field */
	char note[NAME_MAX + 64];
};

static int act_unbind(const char *root, const char *driver, const char *bdf)
{
	struct device dev;
	int ret = device_load(root, bdf, &dev);
	if (ret < 0)
		return ret;
	if (strcmp(dev.driver, driver) != 0)
		return -ENODEV;
	device_detach(root, &dev);
	return 0;
}

static int act_bind(const char *root, const char *driver, const char *bdf)
{
	struct device dev;
	int ret = device_load(root, bdf, &dev);
	if (ret < 0)
		return ret;
	if (dev.driver[0] != '\0')
		return -EBUSY;
	if (dev.override[0] != '\0' && strcmp(dev.override, driver) != 0)
		return -ENODEV;
	return device_attach(root, &dev, driver);
}

static int read_native_driver(const struct device *dev, char *buf, size_t size)
{
	char path[PATH_MAX];
	int ret = join_path(path, sizeof(path), "%s/" NATIVE_DRIVER_FILE, dev->dir);
	if (ret < 0)
		return ret;
	ret = read_attr(path, buf, size);
	if (ret == 0 && buf[0] == '\0')
		return -ENOENT;
	return ret;
}

/*
 * drivers_probe as the kernel does it: an override picks the only driver allowed, else the
 * device's native driver. A probe that fails leaves the device unbound and the write succeeds;
 * only the kernel log (our note) tells.
 */
static int act_probe(const char *root, const char *bdf, struct outcome *out)
{
	struct device dev;
	int ret = device_load(root, bdf, &dev);
	if (ret < 0)
		return ret;
	snprintf(out->driver, sizeof(out->driver), "%s", dev.driver[0] ? dev.driver : "-");
	if (dev.driver[0] != '\0')
		return 0;
	char candidate[NAME_MAX + 1];
	if (dev.override[0] != '\0')
		snprintf(candidate, sizeof(candidate), "%s", dev.override);
	else if (read_native_driver(&dev, candidate, sizeof(candidate)) < 0)
		return 0;
	if (!driver_loaded(root, candidate)) {
		snprintf(out->note, sizeof(out->note), "%s not loaded", candidate);
		return 0;
	}
	ret = device_attach(root, &dev, candidate);
	if (ret < 0) {
		snprintf(out->note, sizeof(out->note), "%s=%s", candidate, errno_name(-ret));
		return 0;
	}
	snprintf(out->driver, sizeof(out->driver), "%s", candidate);
	return 0;
}

/* Stored as the kernel shows it: the value up to the first newline, or "(null)" when empty. */
static int act_override(const struct control_file *cf, const char *value, struct outcome *out)
{
	char stored[VALUE_MAX];
	size_t len = strcspn(value, "\n");
	if (len > NAME_MAX)
		return -EINVAL;
	if (len == 0)
		len = (size_t)snprintf(stored, sizeof(stored), "(null)");
	else
		memcpy(stored, value, len);
	stored[len] = '\0';
	snprintf(out->driver, sizeof(out->driver), "%s", stored);
	stored[len++] = '\n';
	return write_file(cf->path, stored, len);
}

static const char *op_name(enum control_kind kind)
{
	switch (kind) {
	case CONTROL_BIND:
		return "bind";
	case CONTROL_UNBIND:
		return "unbind";
	case CONTROL_NEW_ID:
		return "new_id";
	case CONTROL_REMOVE_ID:
		return "remove_id";
	case CONTROL_PROBE:
		return "probe";
	case CONTROL_OVERRIDE:
		return "override";
	}
	return "?";
}

/* The device a write is about: the file's own device, or the BDF written; none for *_id. */
static const char *device_of(const struct control_file *cf, const char *value)
{
	switch (cf->kind) {
	case CONTROL_OVERRIDE:
		return cf->name;
	case CONTROL_NEW_ID:
	case CONTROL_REMOVE_ID:
		return "";
	default:
		return value;
	}
}

static int dispatch(const struct control_file *cf, const char *value, struct outcome *out)
{
	switch (cf->kind) {
	case CONTROL_BIND:
		return act_bind(cf->root, cf->name, value);
	case CONTROL_UNBIND:
		return act_unbind(cf->root, cf->name, value);
	case CONTROL_PROBE:
		return act_probe(cf->root, value, out);
	case CONTROL_OVERRIDE:
		return act_override(cf, value, out);
	case CONTROL_NEW_ID:
	case CONTROL_REMOVE_ID:
		return 0; /* accepted and logged: tests assert these never happen */
	}
	return -EINVAL;
}

/* The second log field before the action ran: the driver, or for override the value. */
static void outcome_init(const struct control_file *cf, const char *value, struct outcome *out)
{
	*out = (struct outcome){ 0 };
	if (cf->kind == CONTROL_OVERRIDE) {
		int len = (int)strcspn(value, "\n");
		const char *shown = len ? value : "(null)";
		snprintf(out->driver, sizeof(out->driver), "%.*s", len ? len : 6, shown);
	} else if (cf->kind == CONTROL_PROBE) {
		snprintf(out->driver, sizeof(out->driver), "-");
	} else {
		snprintf(out->driver, sizeof(out->driver), "%s", cf->name);
	}
}

static void log_result(const struct control_file *cf, const char *value, int ret,
		       const struct outcome *out, const char *extra)
{
	/* new_id and remove_id name no device; the ids written go in its place. */
	const char *subject = device_of(cf, value)[0] ? device_of(cf, value) : value;
	const char *note = extra[0] ? extra : out->note;
	log_action("%s %s %s %s%s%s", op_name(cf->kind), out->driver, subject,
		   ret < 0 ? errno_name(-ret) : "ok", note[0] ? " " : "", note);
}

static int lock_tree(const char *root)
{
	int fd = real.openat(AT_FDCWD, root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int saved = errno;
			real.close(fd);
			return -saved;
		}
	}
	return fd;
}

/* One write(2) to a control file: returns 0 or -errno, as the kernel's store would. */
static int control_write(const struct control_file *cf, const void *buf, size_t count)
{
	char value[VALUE_MAX];
	if (count >= sizeof(value))
		return cf->kind == CONTROL_OVERRIDE ? -EINVAL : -ENODEV;
	memcpy(value, buf, count);
	value[count] = '\0';
	if (cf->kind != CONTROL_OVERRIDE)
		trim_trailing_space(value);

	int lock = lock_tree(cf->root);
	if (lock < 0)
		return lock;
	struct outcome out;
	outcome_init(cf, value, &out);
	struct injection inj = { 0 };
	int ret = injection_lookup(cf->root, op_name(cf->kind), device_of(cf, value), &inj);
	if (ret > 0) {
		ret = -inj.err;
		log_result(cf, value, ret, &out, inj.hang ? "injected hang" : "injected");
	} else if (ret == 0) {
		ret = dispatch(cf, value, &out);
		log_result(cf, value, ret, &out, "");
	} else {
		log_result(cf, value, ret, &out, "bad VG_MOCK_FAIL");
	}
	real.close(lock);
	if (inj.hang)
		hang_for_a_while(); /* outside the lock: other processes carry on, as they would */
	return ret;
}

/* ---- the interposed functions ---------------------------------------------------------------- */

static mode_t mode_from(int flags, va_list ap)
{
	return open_takes_mode(flags) ? (mode_t)va_arg(ap, unsigned int) : 0;
}

VG_EXPORT int open(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_from(flags, ap);
	va_end(ap);
	return mock_openat(AT_FDCWD, path, flags, mode);
}

VG_EXPORT int open64(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_from(flags, ap);
	va_end(ap);
	return mock_openat(AT_FDCWD, path, flags, mode);
}

VG_EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_from(flags, ap);
	va_end(ap);
	return mock_openat(dirfd, path, flags, mode);
}

VG_EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_from(flags, ap);
	va_end(ap);
	return mock_openat(dirfd, path, flags, mode);
}

VG_EXPORT int __open_2(const char *path, int flags)
{
	return mock_openat(AT_FDCWD, path, flags, 0);
}

VG_EXPORT int __open64_2(const char *path, int flags)
{
	return mock_openat(AT_FDCWD, path, flags, 0);
}

VG_EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	return mock_openat(dirfd, path, flags, 0);
}

VG_EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	return mock_openat(dirfd, path, flags, 0);
}

VG_EXPORT ssize_t write(int fd, const void *buf, size_t count)
{
	ensure_real();
	struct control_file cf;
	if (!fdtab_find(fd, &cf))
		return real.write(fd, buf, count);
	/* The number may have been reused after a close we did not see (fclose, close_range). */
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_dev != cf.dev || st.st_ino != cf.ino) {
		fdtab_forget(fd);
		return real.write(fd, buf, count);
	}
	int ret = control_write(&cf, buf, count);
	if (ret < 0) {
		errno = -ret;
		return -1;
	}
	return (ssize_t)count;
}

VG_EXPORT int close(int fd)
{
	ensure_real();
	fdtab_forget(fd);
	return real.close(fd);
}

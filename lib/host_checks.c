#include "lib/host_checks.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/gpu_state.h"
#include "lib/spawn.h"
#include "lib/sysfs.h"

enum module_state { MODULE_MISSING, MODULE_LOADABLE, MODULE_BUILTIN, MODULE_LOADED };

static struct vg_check *add_check(struct vg_host_report *report, const char *name,
				  enum vg_check_status status, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static struct vg_check *add_check(struct vg_host_report *report, const char *name,
				  enum vg_check_status status, const char *fmt, ...)
{
	if (report->n_checks >= VG_HOST_MAX_CHECKS)
		return NULL;
	struct vg_check *check = &report->checks[report->n_checks++];
	snprintf(check->name, sizeof(check->name), "%s", name);
	check->status = status;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(check->detail, sizeof(check->detail), fmt, ap);
	va_end(ap);
	return check;
}

const char *vg_check_status_name(enum vg_check_status status)
{
	switch (status) {
	case VG_CHECK_OK:
		return "ok";
	case VG_CHECK_WARN:
		return "warn";
	case VG_CHECK_FAIL:
		return "fail";
	}
	return "unknown";
}

const char *vg_qemu_binary_for_arch(const char *arch)
{
	if (strcmp(arch, "aarch64") == 0 || strcmp(arch, "arm64") == 0)
		return "qemu-system-aarch64";
	return "qemu-system-x86_64";
}

int vg_parse_qemu_version(const char *text, char *out, size_t size)
{
	const char *p = strstr(text, "version ");
	if (p == NULL)
		return -1;
	p += strlen("version ");
	size_t len = strspn(p, "0123456789.");
	if (len == 0 || len >= size)
		return -1;
	memcpy(out, p, len);
	out[len] = '\0';
	return 0;
}

static void dev_path(const struct vg_host_env *env, const char *name, char *buf, size_t size)
{
	snprintf(buf, size, "%s/%s", env->dev_root ? env->dev_root : "/dev", name);
}

/* 0: a character device we can open read-write; otherwise the errno. */
static int probe_char_device(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return errno;
	if (!S_ISCHR(st.st_mode))
		return ENODEV;
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

/* Module names use '_' and '-' interchangeably; file names may carry a compression suffix. */
static bool module_file_matches(const char *path, size_t len, const char *module)
{
	const char *slash = memrchr(path, '/', len);
	const char *base = slash ? slash + 1 : path;
	size_t mlen = strlen(module);
	if ((size_t)(path + len - base) < mlen + 3)
		return false;
	for (size_t i = 0; i < mlen; i++) {
		char a = base[i] == '-' ? '_' : base[i];
		char b = module[i] == '-' ? '_' : module[i];
		if (a != b)
			return false;
	}
	return strncmp(base + mlen, ".ko", 3) == 0;
}

static bool module_listed(const char *file, const char *module)
{
	cleanup_free char *text = NULL;
	if (vg_read_file(file, 64u << 20, &text, NULL, NULL) < 0)
		return false;
	for (char *line = text; line != NULL && *line != '\0';) {
		char *end = strchr(line, '\n');
		size_t len = end ? (size_t)(end - line) : strlen(line);
		char *colon = memchr(line, ':', len);
		if (module_file_matches(line, colon ? (size_t)(colon - line) : len, module))
			return true;
		line = end ? end + 1 : NULL;
	}
	return false;
}

static enum module_state module_state(const struct vg_host_env *env, const char *modules_dir,
				      const char *module, const char *driver_dir)
{
	char rel[128];
	snprintf(rel, sizeof(rel), "module/%s", module);
	if (vg_sysfs_exists(env->sysfs, rel))
		return MODULE_LOADED;
	if (driver_dir != NULL) {
		snprintf(rel, sizeof(rel), "bus/pci/drivers/%s", driver_dir);
		if (vg_sysfs_exists(env->sysfs, rel))
			return MODULE_LOADED;
	}
	char file[PATH_MAX + 32];
	snprintf(file, sizeof(file), "%s/modules.builtin", modules_dir);
	if (module_listed(file, module))
		return MODULE_BUILTIN;
	snprintf(file, sizeof(file), "%s/modules.dep", modules_dir);
	if (module_listed(file, module))
		return MODULE_LOADABLE;
	return MODULE_MISSING;
}

static void check_kvm(const struct vg_host_env *env, struct vg_host_report *report)
{
	char path[PATH_MAX];
	dev_path(env, "kvm", path, sizeof(path));
	int e = probe_char_device(path);
	if (e == 0) {
		cleanup_close int kvm = open(path, O_RDWR | O_CLOEXEC);
		int api = kvm < 0 ? -1 : ioctl(kvm, KVM_GET_API_VERSION, 0);
		/* A node that opens but cannot create a VM is what a broken nested setup looks like. */
		cleanup_close int vm = api == KVM_API_VERSION ? ioctl(kvm, KVM_CREATE_VM, 0) : -1;
		if (vm >= 0)
			add_check(report, "kvm", VG_CHECK_OK, "%s is usable (API version %d)", path,
				  api);
		else
			add_check(report, "kvm", VG_CHECK_FAIL,
				  "%s opens but cannot create a VM (API version %d): %s", path, api,
				  strerror(errno));
	} else if (e == ENOENT)
		add_check(report, "kvm", VG_CHECK_FAIL,
			  "%s is missing: enable virtualization (VT-x/AMD-V, or EL2 on arm64) in "
			  "the firmware and load kvm_intel or kvm_amd; without KVM a guest runs "
			  "under TCG and cannot use VFIO devices at speed",
			  path);
	else
		add_check(report, "kvm", VG_CHECK_FAIL, "%s cannot be opened: %s", path,
			  strerror(e));
}

static int count_iommu_groups(const struct vg_sysfs *sysfs)
{
	char path[PATH_MAX];
	if (vg_sysfs_path(sysfs, path, sizeof(path), NULL, "kernel/iommu_groups") < 0)
		return 0;
	cleanup_dir DIR *dir = opendir(path);
	if (dir == NULL)
		return 0;
	int count = 0;
	struct dirent *entry;
	while ((entry = readdir(dir)) != NULL)
		count += entry->d_name[0] != '.';
	return count;
}

static void read_iommu_cmdline(const struct vg_host_env *env, char *out, size_t size)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/cmdline", env->proc_root ? env->proc_root : "/proc");
	cleanup_free char *cmdline = NULL;
	out[0] = '\0';
	if (vg_read_file(path, 1u << 16, &cmdline, NULL, NULL) < 0)
		return;
	size_t len = 0;
	char *save = NULL;
	for (char *word = strtok_r(cmdline, " \t\n", &save); word;
	     word = strtok_r(NULL, " \t\n", &save)) {
		if (strstr(word, "iommu") == NULL)
			continue;
		int n = snprintf(out + len, size - len, "%s%s", len ? " " : "", word);
		if (n < 0 || (size_t)n >= size - len)
			break;
		len += (size_t)n;
	}
}

static void check_iommu(const struct vg_host_env *env, struct vg_host_report *report)
{
	int groups = count_iommu_groups(env->sysfs);
	char args[256];
	read_iommu_cmdline(env, args, sizeof(args));
	const char *shown = args[0] ? args : "no iommu options";
	if (groups > 0)
		add_check(report, "iommu", VG_CHECK_OK, "%d IOMMU groups; kernel command line: %s",
			  groups, shown);
	else
		add_check(report, "iommu", VG_CHECK_FAIL,
			  "no IOMMU groups (kernel command line: %s): " VG_REASON_IOMMU_OFF, shown);
}

static void check_module(const struct vg_host_env *env, struct vg_host_report *report,
			 const char *modules_dir, const char *module, const char *driver_dir)
{
	enum module_state state = module_state(env, modules_dir, module, driver_dir);
	switch (state) {
	case MODULE_LOADED:
		add_check(report, module, VG_CHECK_OK, "loaded");
		break;
	case MODULE_BUILTIN:
		add_check(report, module, VG_CHECK_OK, "built into the kernel");
		break;
	case MODULE_LOADABLE:
		add_check(report, module, VG_CHECK_WARN, "not loaded, but loadable: modprobe %s",
			  module);
		break;
	case MODULE_MISSING:
		add_check(report, module, VG_CHECK_FAIL,
			  "neither loaded nor found in %s; install the kernel's vfio modules "
			  "(linux-modules or linux-image-extra packages)",
			  modules_dir);
		break;
	}
	if (strcmp(module, "vfio_pci") == 0) {
		report->vfio_pci_usable = state != MODULE_MISSING;
		if (!report->vfio_pci_usable)
			snprintf(report->vfio_pci_problem, sizeof(report->vfio_pci_problem),
				 "the vfio-pci module is unavailable (neither loaded nor found in "
				 "%s): install the kernel's vfio modules, then modprobe vfio-pci",
				 modules_dir);
	}
}

static void check_vfio_node(const struct vg_host_env *env, struct vg_host_report *report)
{
	char path[PATH_MAX];
	dev_path(env, "vfio/vfio", path, sizeof(path));
	int e = probe_char_device(path);
	if (e == 0)
		add_check(report, "vfio-container", VG_CHECK_OK, "%s is usable", path);
	else
		add_check(report, "vfio-container", VG_CHECK_WARN,
			  "%s: %s (it appears once the vfio module is loaded)", path,
			  strerror(e));
}

static void check_qemu(const struct vg_host_env *env, struct vg_host_report *report)
{
	const char *binary = env->qemu_binary ? env->qemu_binary
					      : vg_qemu_binary_for_arch(report->arch);
	cleanup_error struct vg_error *err = NULL;
	if (vg_find_executable(binary, report->qemu_path, sizeof(report->qemu_path), &err) < 0) {
		add_check(report, "qemu", VG_CHECK_FAIL, "%s; install the qemu-system package",
			  err->msg);
		return;
	}
	char output[512];
	char *argv[] = { report->qemu_path, (char *)"--version", NULL };
	int status = vg_spawn_capture(argv, 5000, output, sizeof(output), &err);
	if (status != 0 || vg_parse_qemu_version(output, report->qemu_version,
						 sizeof(report->qemu_version)) < 0) {
		add_check(report, "qemu", VG_CHECK_FAIL, "%s --version failed: %s",
			  report->qemu_path, err ? err->msg : output);
		return;
	}
	add_check(report, "qemu", VG_CHECK_OK, "%s version %s", report->qemu_path,
		  report->qemu_version);
}

static void check_tun(const struct vg_host_env *env, struct vg_host_report *report)
{
	char path[PATH_MAX];
	dev_path(env, "net/tun", path, sizeof(path));
	int e = probe_char_device(path);
	if (e == 0)
		add_check(report, "tun", VG_CHECK_OK, "%s is usable", path);
	else
		add_check(report, "tun", VG_CHECK_FAIL, "%s: %s; load the tun module", path,
			  strerror(e));
}

static void check_vsock(const struct vg_host_env *env, struct vg_host_report *report,
			const char *modules_dir)
{
	char path[PATH_MAX];
	dev_path(env, "vhost-vsock", path, sizeof(path));
	int e = probe_char_device(path);
	if (e == 0) {
		add_check(report, "vhost-vsock", VG_CHECK_OK, "%s is usable", path);
		return;
	}
	enum module_state state = module_state(env, modules_dir, "vhost_vsock", NULL);
	add_check(report, "vhost-vsock", VG_CHECK_WARN, "%s: %s%s; sandboxes fall back to %s",
		  path, strerror(e),
		  state == MODULE_LOADABLE ? " (loadable: modprobe vhost_vsock)" : "",
		  "the virtio-serial ready channel");
}

static void check_hugepages(const struct vg_host_env *env, struct vg_host_report *report)
{
	char path[PATH_MAX];
	if (vg_sysfs_path(env->sysfs, path, sizeof(path), NULL, "kernel/mm/hugepages") < 0)
		return;
	cleanup_dir DIR *dir = opendir(path);
	char summary[400] = "";
	size_t len = 0;
	long long reserved = 0;
	struct dirent *entry;
	while (dir != NULL && (entry = readdir(dir)) != NULL) {
		if (strncmp(entry->d_name, "hugepages-", 10) != 0)
			continue;
		char rel[320];
		long long total = 0, free_pages = 0;
		snprintf(rel, sizeof(rel), "kernel/mm/hugepages/%s/nr_hugepages", entry->d_name);
		vg_sysfs_read_long(env->sysfs, rel, &total, NULL);
		snprintf(rel, sizeof(rel), "kernel/mm/hugepages/%s/free_hugepages", entry->d_name);
		vg_sysfs_read_long(env->sysfs, rel, &free_pages, NULL);
		reserved += total;
		int n = snprintf(summary + len, sizeof(summary) - len, "%s%s: %lld total, %lld free",
				 len ? "; " : "", entry->d_name + 10, total, free_pages);
		if (n > 0 && (size_t)n < sizeof(summary) - len)
			len += (size_t)n;
	}
	if (reserved > 0)
		add_check(report, "hugepages", VG_CHECK_OK, "%s", summary);
	else
		add_check(report, "hugepages", VG_CHECK_WARN,
			  "no hugepages reserved%s%s; guest RAM uses normal pages (reserve them with "
			  "hugepages= on the kernel command line for large guests)",
			  len ? ": " : "", summary);
}

void vg_host_checks_run(const struct vg_host_env *env, struct vg_host_report *report)
{
	memset(report, 0, sizeof(*report));
	struct utsname uts;
	if (uname(&uts) == 0) {
		snprintf(report->arch, sizeof(report->arch), "%s", uts.machine);
		snprintf(report->kernel_release, sizeof(report->kernel_release), "%s",
			 uts.release);
		snprintf(report->hostname, sizeof(report->hostname), "%s", uts.nodename);
	}
	char modules_dir[PATH_MAX];
	if (env->modules_dir != NULL)
		snprintf(modules_dir, sizeof(modules_dir), "%s", env->modules_dir);
	else
		snprintf(modules_dir, sizeof(modules_dir), "/lib/modules/%s",
			 report->kernel_release);

	check_kvm(env, report);
	check_iommu(env, report);
	check_module(env, report, modules_dir, "vfio", NULL);
	check_module(env, report, modules_dir, "vfio_iommu_type1", NULL);
	check_module(env, report, modules_dir, "vfio_pci", "vfio-pci");
	check_vfio_node(env, report);
	check_qemu(env, report);
	check_tun(env, report);
	check_vsock(env, report, modules_dir);
	check_hugepages(env, report);
}

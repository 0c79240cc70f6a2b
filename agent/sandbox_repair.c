#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/sandbox_record.h"
#include "agent/sandboxes-priv.h"
#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/config.h"
#include "lib/error.h"
#include "lib/log.h"
#include "lib/process.h"
#include "lib/sysfs.h"
#include "shim/bind_journal.h"
#include "shim/nat.h"
#include "shim/tap.h"

#define REPAIR_WRITE_TIMEOUT_MS 10000

static bool spec_has_nat(const struct vg_sandbox *sb)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/spec.json", sb->dir);
	cleanup_free char *text = NULL;
	if (vg_read_file(path, 1u << 20, &text, NULL, NULL) < 0)
		return false;
	json_object *spec = json_tokener_parse(text), *net = NULL, *nat = NULL;
	bool on = spec && json_object_object_get_ex(spec, "network", &net) &&
		  json_object_object_get_ex(net, "nat", &nat) && json_object_get_boolean(nat);
	json_object_put(spec);
	return on;
}

/* A QEMU outlives its shim only if PDEATHSIG failed; it is ours if its argv names our dir. */
static void kill_stray_qemu(const struct vg_sandbox *sb)
{
	if (sb->qemu_pid <= 0)
		return;
	char path[64], cmdline[8192];
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)sb->qemu_pid);
	cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof(cmdline) - 1) : -1;
	if (n <= 0)
		return;
	for (ssize_t i = 0; i < n; i++)
		if (cmdline[i] == '\0')
			cmdline[i] = ' ';
	cmdline[n] = '\0';
	if (strstr(cmdline, sb->dir) != NULL) {
		vg_warn("sandbox %s: QEMU %d outlived its shim; killing it", sb->id,
			(int)sb->qemu_pid);
		kill(sb->qemu_pid, SIGKILL);
	}
}

void vg_sandbox_repair(struct vg_sandboxes *mgr, struct vg_sandbox *sb)
{
	kill_stray_qemu(sb);
	char journal[4200];
	snprintf(journal, sizeof(journal), "%s/bind-journal.json", sb->dir);
	if (access(journal, F_OK) == 0) {
		struct vg_sysfs sysfs;
		cleanup_error struct vg_error *err = NULL;
		if (vg_sysfs_init(&sysfs, mgr->config->sysfs_root, &err) < 0 ||
		    vg_bind_journal_replay(&sysfs, journal, REPAIR_WRITE_TIMEOUT_MS, &err) < 0) {
			vg_err("sandbox %s: restoring its devices failed, journal kept for the next "
			       "try: %s",
			       sb->id, err->msg);
		} else {
			vg_info("sandbox %s: devices restored from the bind journal", sb->id);
			unlink(journal);
		}
	}
	char tap[VG_TAP_NAME_MAX];
	if (sb->tap[0] != '\0')
		snprintf(tap, sizeof(tap), "%s", sb->tap);
	else
		vg_tap_name_for(sb->id, tap);
	cleanup_error struct vg_error *tap_err = NULL;
	if (vg_link_exists(tap, &tap_err) == 1 && vg_tap_delete(tap, &tap_err) == 0)
		vg_info("sandbox %s: deleted leftover TAP %s", sb->id, tap);
	else if (tap_err != NULL)
		vg_warn("sandbox %s: %s", sb->id, tap_err->msg);
	if (spec_has_nat(sb)) {
		cleanup_error struct vg_error *nat_err = NULL;
		if (vg_nat_remove(sb->id, &nat_err) < 0)
			vg_warn("sandbox %s: %s", sb->id, nat_err->msg);
	}
}

int vg_sandbox_remove_dir(const char *dir, struct vg_error **err)
{
	char journal[4200];
	snprintf(journal, sizeof(journal), "%s/bind-journal.json", dir);
	if (access(journal, F_OK) == 0)
		return vg_error_set(err, EBUSY,
				    "%s still holds a bind journal: its devices are not restored, "
				    "so the directory is kept",
				    dir);
	cleanup_dir DIR *d = opendir(dir);
	if (d == NULL)
		return errno == ENOENT ? 0 : vg_error_set_errno(err, errno, "open %s", dir);
	struct dirent *entry;
	while ((entry = readdir(d)) != NULL) {
		if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
			continue;
		if (unlinkat(dirfd(d), entry->d_name, 0) < 0 && errno != ENOENT)
			return vg_error_set_errno(err, errno, "remove %s/%s", dir, entry->d_name);
	}
	if (rmdir(dir) < 0 && errno != ENOENT)
		return vg_error_set_errno(err, errno, "remove %s", dir);
	return 0;
}

static int make_private_dir(const char *path, struct vg_error **err)
{
	if (mkdir(path, 0711) < 0 && errno != EEXIST)
		return vg_error_set_errno(err, errno, "create %s", path);
	struct stat st;
	if (stat(path, &st) < 0)
		return vg_error_set_errno(err, errno, "%s", path);
	if (!S_ISDIR(st.st_mode) || (st.st_mode & 0022) != 0 || (st.st_uid != 0 && st.st_uid != geteuid()))
		return vg_error_set(err, EPERM,
				    "%s must be a directory owned by root and writable only by it",
				    path);
	return 0;
}

static int resolve_shim_binary(const struct vg_config *config, char *out, size_t size,
			       struct vg_error **err)
{
	if (config->shim_binary[0] != '\0') {
		snprintf(out, size, "%s", config->shim_binary);
		if (access(out, X_OK) < 0)
			return vg_error_set_errno(err, errno, "shim_binary %s", out);
		return 0;
	}
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0)
		return vg_error_set_errno(err, errno, "readlink /proc/self/exe");
	self[n] = '\0';
	*strrchr(self, '/') = '\0';
	/* Installed (sbin -> libexec/vmgpu), then the build tree (agent/ beside shim/). */
	const char *candidates[] = { "/../libexec/vmgpu/vmgpu-shim", "/../shim/vmgpu-shim",
				     "/vmgpu-shim" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(candidates); i++) {
		snprintf(out, size, "%s%s", self, candidates[i]);
		if (access(out, X_OK) == 0)
			return 0;
	}
	return vg_error_set(err, ENOENT,
			    "vmgpu-shim not found next to %s; set shim_binary in the config", self);
}

int vg_sandboxes_init(struct vg_sandboxes *mgr, const struct vg_config *config,
		      struct vg_grpc_loop *loop, struct vg_device_table *devices,
		      struct vg_error **err)
{
	memset(mgr, 0, sizeof(*mgr));
	mgr->config = config;
	mgr->loop = loop;
	mgr->devices = devices;
	int ret = vg_net_pool_parse(config->network_pool, &mgr->pool, err);
	if (ret < 0)
		return ret;
	ret = resolve_shim_binary(config, mgr->shim_binary, sizeof(mgr->shim_binary), err);
	if (ret < 0)
		return ret;
	ret = make_private_dir(config->state_dir, err);
	if (ret < 0)
		return ret;
	if (strlen(config->state_dir) + sizeof("/sandboxes") > sizeof(mgr->root))
		return vg_error_set(err, ENAMETOOLONG, "state_dir %s is too long", config->state_dir);
	snprintf(mgr->root, sizeof(mgr->root), "%.3780s/sandboxes", config->state_dir);
	return make_private_dir(mgr->root, err);
}

/* One directory found at start: adopt its live shim, or repair what its dead one left. */
static void recover_one(struct vg_sandboxes *mgr, const char *name)
{
	char dir[4200];
	snprintf(dir, sizeof(dir), "%s/%s", mgr->root, name);
	struct vg_sandbox *sb = vg_sandbox_new(mgr, name);
	cleanup_error struct vg_error *err = NULL;
	if (sb == NULL)
		return;
	if (vg_sandbox_record_load(dir, sb, &err) < 0) {
		/* The agent died before the record was durable: nothing else happened yet. */
		vg_warn("sandbox dir %s has no usable record (%s); removing it", dir, err->msg);
		vg_sandbox_remove_dir(dir, NULL);
		json_object_put(sb->labels);
		json_object_put(sb->annotations);
		free(sb);
		return;
	}
	bool had_status = vg_sandbox_read_shim_status(sb) == 0;
	vg_sandbox_link(mgr, sb);
	if (had_status && vg_process_alive(sb->shim_pid, sb->shim_start_time) &&
	    vg_sandbox_watch_shim(sb, &err) == 0) {
		for (size_t i = 0; i < sb->n_gpus; i++) {
			int pos = vg_device_table_find(mgr->devices, sb->gpus[i]);
			if (pos >= 0)
				vg_device_table_set_owner(mgr->devices, (size_t)pos, sb->id);
		}
		vg_info("sandbox %s: adopted live shim %d (%s)", sb->id, (int)sb->shim_pid,
			vg_sb_state_name(sb->state));
		return;
	}
	bool clean = vg_sandbox_has_exit_record(sb);
	if (!clean && (sb->state != VG_SB_FAILED || !had_status)) {
		sb->state = VG_SB_FAILED;
		snprintf(sb->reason, sizeof(sb->reason), "%s",
			 had_status ? "shim died" : "the agent stopped before the shim started");
	}
	vg_sandbox_repair(mgr, sb);
	if (vg_sandbox_record_save(sb, &err) < 0)
		vg_warn("sandbox %s: %s", sb->id, err->msg);
	vg_info("sandbox %s: not running (%s%s%s); its GPUs are free", sb->id,
		vg_sb_state_name(sb->state), sb->reason[0] ? ": " : "", sb->reason);
}

int vg_sandboxes_recover(struct vg_sandboxes *mgr, struct vg_error **err)
{
	cleanup_dir DIR *d = opendir(mgr->root);
	if (d == NULL)
		return vg_error_set_errno(err, errno, "open %s", mgr->root);
	struct dirent *entry;
	while ((entry = readdir(d)) != NULL) {
		if (entry->d_name[0] == '.' || strstr(entry->d_name, ".tmp") != NULL)
			continue;
		recover_one(mgr, entry->d_name);
	}
	vg_device_table_refresh(mgr->devices);
	return 0;
}

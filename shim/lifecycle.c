#include "shim/lifecycle.h"

#include <errno.h>
#include <stdbool.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/log.h"
#include "lib/process.h"
#include "lib/sysfs.h"
#include "shim/nat.h"
#include "shim/qemu_argv.h"
#include "shim/qemu_child.h"
#include "shim/qmp.h"
#include "shim/ready.h"
#include "shim/sandbox_files.h"
#include "shim/spec.h"
#include "shim/tap.h"
#include "shim/vfio_guard.h"

#define SYSFS_WRITE_TIMEOUT_MS 10000
#define POWERDOWN_RETRY_NS 1000000000LL
#define KILL_AFTER_QUIT_NS 3000000000LL

/* The undo record: each field says what has been done and must be undone. */
struct shim {
	struct vg_sandbox_spec spec;
	struct vg_sandbox_paths paths;
	struct vg_sandbox_status status;
	int sync_fd;
	int signal_fd;
	struct vg_vfio_guard *vfio;
	struct vg_tap tap;
	bool nat_added;
	pid_t qemu_pid;
	struct vg_qmp qmp;
	int ready_fd;
	char ready_line[1024];
	size_t ready_len;
	bool qemu_exited;
	int qemu_wait_status;
	bool stop_requested;
	bool failed; /* status.reason already says why */
	int64_t stop_started_ns;
	int64_t next_powerdown_ns;
	int64_t kill_at_ns;
	bool quit_sent;
};

static void set_state(struct shim *shim, enum vg_sandbox_state state, const char *reason)
{
	shim->status.state = state;
	if (reason != NULL)
		snprintf(shim->status.reason, sizeof(shim->status.reason), "%s", reason);
	cleanup_error struct vg_error *err = NULL;
	if (vg_status_write(&shim->paths, shim->spec.id, &shim->status, &err) < 0)
		vg_warn("sandbox %s: %s", shim->spec.id, err->msg);
	vg_info("sandbox %s: %s%s%s", shim->spec.id, vg_sandbox_state_name(state),
		shim->status.reason[0] ? ": " : "", shim->status.reason);
}

static void fail(struct shim *shim, const char *reason)
{
	if (shim->failed)
		return;
	shim->failed = true;
	set_state(shim, VG_SANDBOX_FAILED, reason);
}

/* One JSON line to whoever started us; a parent that went away is not our problem. */
static void report_to_parent(struct shim *shim, const struct vg_error *err)
{
	if (shim->sync_fd < 0)
		return;
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "started", json_object_new_boolean(err == NULL));
	json_object_object_add(obj, "id", json_object_new_string(shim->spec.id));
	json_object_object_add(obj, "shim_pid", json_object_new_int(getpid()));
	json_object_object_add(obj, "qemu_pid", json_object_new_int(shim->qemu_pid));
	if (err != NULL) {
		json_object_object_add(obj, "errno", json_object_new_int(err->code));
		json_object_object_add(obj, "error", json_object_new_string(err->msg));
	}
	const char *text = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN);
	ssize_t ignored = write(shim->sync_fd, text, strlen(text));
	ignored = write(shim->sync_fd, "\n", 1);
	(void)ignored;
	json_object_put(obj);
	close(shim->sync_fd);
	shim->sync_fd = -1;
}

static int setup_signals(struct shim *shim, struct vg_error **err)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		return vg_error_set_errno(err, errno, "block signals");
	/* The sync pipe and QMP may be closed under us; a write must fail, not kill. */
	signal(SIGPIPE, SIG_IGN);
	shim->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (shim->signal_fd < 0)
		return vg_error_set_errno(err, errno, "signalfd");
	return 0;
}

static int bind_gpus(struct shim *shim, struct vg_error **err)
{
	if (shim->spec.n_gpus == 0)
		return 0;
	struct vg_bdf functions[VG_SPEC_MAX_GPUS * (VG_SPEC_MAX_COMPANIONS + 1)];
	size_t n = 0;
	for (size_t g = 0; g < shim->spec.n_gpus; g++) {
		functions[n++] = shim->spec.gpus[g].addr;
		for (size_t c = 0; c < shim->spec.gpus[g].n_companions; c++)
			functions[n++] = shim->spec.gpus[g].companions[c];
	}
	struct vg_sysfs sysfs;
	char journal[PATH_MAX];
	int ret = vg_sysfs_init(&sysfs, shim->spec.sysfs_root, err);
	if (ret == 0)
		ret = vg_sandbox_file(&shim->paths, "bind-journal.json", journal, sizeof(journal),
				      err);
	if (ret == 0)
		ret = vg_vfio_guard_bind(&sysfs, journal, functions, n, SYSFS_WRITE_TIMEOUT_MS,
					 shim->spec.dev_root, &shim->vfio, err);
	return ret < 0 ? vg_error_prefix(err, "bind GPUs to vfio-pci") : 0;
}

static int create_tap(struct shim *shim, struct vg_error **err)
{
	struct vg_spec_network *net = &shim->spec.network;
	if (!net->enabled)
		return 0;
	char name[VG_TAP_NAME_MAX];
	if (net->tap_name[0] != '\0')
		snprintf(name, sizeof(name), "%s", net->tap_name);
	else
		vg_tap_name_for(shim->spec.id, name);
	int ret = vg_tap_open(name, net, &shim->tap, err);
	if (ret < 0)
		return vg_error_prefix(err, "create TAP");
	snprintf(shim->status.tap, sizeof(shim->status.tap), "%s", shim->tap.name);
	if (net->nat) {
		ret = vg_nat_add(shim->spec.id, net->guest_addr, shim->tap.name, err);
		if (ret < 0)
			return ret;
		shim->nat_added = true;
	}
	return 0;
}

/* QEMU as its own uid needs its sandbox directory and its VFIO group nodes, nothing more. */
static int prepare_unprivileged_qemu(struct shim *shim, struct vg_error **err)
{
	if (shim->spec.qemu_uid < 0)
		return 0;
	uid_t uid = (uid_t)shim->spec.qemu_uid;
	gid_t gid = (gid_t)shim->spec.qemu_gid;
	if (chown(shim->paths.dir, uid, gid) < 0)
		return vg_error_set_errno(err, errno, "hand %s to uid %u", shim->paths.dir, uid);
	for (size_t g = 0; g < shim->spec.n_gpus; g++) {
		int group = shim->spec.gpus[g].iommu_group;
		char node[PATH_MAX + 32];
		if (group < 0)
			continue;
		snprintf(node, sizeof(node), "%s/vfio/%d", shim->spec.dev_root, group);
		if (chown(node, uid, gid) < 0)
			return vg_error_set_errno(err, errno, "hand %s to uid %u", node, uid);
	}
	return 0;
}

static int start_qemu(struct shim *shim, struct vg_error **err)
{
	cleanup_argv struct vg_argv argv = { 0 };
	struct vg_qemu_fds fds = { .tap_fd = shim->tap.fd };
	int ret = vg_qemu_build_argv(&shim->spec, &shim->paths, &fds, &argv, err);
	if (ret < 0)
		return vg_error_prefix(err, "build the QEMU command line");
	cleanup_free char *line = vg_argv_join(&argv);
	vg_info("sandbox %s: starting %s", shim->spec.id, line ? line : argv.argv[0]);
	char log_path[PATH_MAX];
	ret = vg_sandbox_file(&shim->paths, "qemu.log", log_path, sizeof(log_path), err);
	if (ret < 0)
		return ret;
	ret = prepare_unprivileged_qemu(shim, err);
	if (ret < 0)
		return ret;
	uint64_t memlock = 0;
	/* Only an unprivileged QEMU is bound by RLIMIT_MEMLOCK; root has CAP_IPC_LOCK, and raising
	 * the limit needs CAP_SYS_RESOURCE, which a container may not grant. */
	if (shim->spec.n_gpus > 0 && shim->spec.qemu_uid >= 0) {
		/* VFIO pins all guest RAM; BARs are mapped too. A little slack for QEMU itself. */
		memlock = shim->spec.memory_mib << 20;
		for (size_t g = 0; g < shim->spec.n_gpus; g++)
			memlock += shim->spec.gpus[g].bar_bytes;
		memlock += 64u << 20;
	}
	struct vg_qemu_launch launch = { argv.argv, shim->tap.fd, log_path, shim->spec.qemu_uid,
					 shim->spec.qemu_gid, memlock };
	ret = vg_qemu_spawn(&launch, &shim->qemu_pid, err);
	if (ret < 0)
		return ret;
	shim->status.qemu_pid = shim->qemu_pid;
	shim->status.qemu_exec_ns = vg_now_ns();
	/* QEMU holds the TAP now; our copy would keep the device alive after QEMU dies. */
	vg_tap_close(&shim->tap);
	return 0;
}

static int connect_ready_channel(struct shim *shim, struct vg_error **err)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", shim->paths.ready_socket);
	int64_t deadline = vg_monotonic_ns() + 30 * 1000000000LL;
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			return vg_error_set_errno(err, errno, "socket");
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
			shim->ready_fd = fd;
			return 0;
		}
		int saved = errno;
		close(fd);
		if ((saved != ENOENT && saved != ECONNREFUSED) || vg_monotonic_ns() > deadline)
			return vg_error_set_errno(err, saved, "connect to the ready channel %s",
						  shim->paths.ready_socket);
		struct timespec pause = { 0, 10 * 1000 * 1000 };
		nanosleep(&pause, NULL);
	}
}

static void begin_stop(struct shim *shim, const char *why)
{
	if (shim->stop_requested || shim->qemu_exited)
		return;
	shim->stop_requested = true;
	shim->stop_started_ns = vg_monotonic_ns();
	shim->next_powerdown_ns = shim->stop_started_ns;
	if (!shim->failed)
		set_state(shim, VG_SANDBOX_STOPPING, why);
}

/* Fast path for a sandbox that already failed: no guest to be polite to. */
static void begin_teardown(struct shim *shim)
{
	begin_stop(shim, NULL);
	shim->next_powerdown_ns = INT64_MAX;
	shim->stop_started_ns = vg_monotonic_ns() - (int64_t)shim->spec.stop_timeout_s * 1000000000LL;
}

static void handle_ready_line(struct shim *shim, const char *line)
{
	struct vg_ready_report report;
	cleanup_error struct vg_error *err = NULL;
	if (vg_ready_parse(line, shim->spec.id, &report, &err) < 0) {
		vg_warn("sandbox %s: %s", shim->spec.id, err->msg);
		return;
	}
	if (!report.ready) {
		char reason[400];
		snprintf(reason, sizeof(reason), "guest init failed: %s", report.reason);
		fail(shim, reason);
		begin_teardown(shim);
		return;
	}
	size_t len = 0;
	for (size_t i = 0; i < report.n_pci && len + 10 < sizeof(shim->status.guest_pci); i++)
		len += (size_t)snprintf(shim->status.guest_pci + len,
					sizeof(shim->status.guest_pci) - len, "%s%04x:%04x",
					i ? "," : "", report.pci[i] >> 16, report.pci[i] & 0xffff);
	snprintf(shim->status.guest_net, sizeof(shim->status.guest_net), "%s", report.net);
	if (vg_ready_check_gpus(&report, &shim->spec, &err) < 0) {
		fail(shim, err->msg);
		begin_teardown(shim);
		return;
	}
	shim->status.ready_ns = vg_now_ns();
	set_state(shim, VG_SANDBOX_READY, "");
}

static void read_ready_channel(struct shim *shim)
{
	char buf[512];
	ssize_t n = read(shim->ready_fd, buf, sizeof(buf));
	if (n <= 0) {
		if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			close(shim->ready_fd);
			shim->ready_fd = -1;
		}
		return;
	}
	for (ssize_t i = 0; i < n; i++) {
		if (buf[i] == '\n') {
			shim->ready_line[shim->ready_len] = '\0';
			if (shim->status.state == VG_SANDBOX_CREATING)
				handle_ready_line(shim, shim->ready_line);
			shim->ready_len = 0;
		} else if (shim->ready_len + 1 < sizeof(shim->ready_line)) {
			shim->ready_line[shim->ready_len++] = buf[i];
		}
	}
}

static void reap_children(struct shim *shim)
{
	int status;
	pid_t pid;
	/* As a subreaper we also inherit orphans; reap them all so none stays a zombie. */
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid == shim->qemu_pid) {
			shim->qemu_exited = true;
			shim->qemu_wait_status = status;
		}
	}
}

static void handle_signals(struct shim *shim)
{
	struct signalfd_siginfo info;
	while (read(shim->signal_fd, &info, sizeof(info)) == (ssize_t)sizeof(info)) {
		if (info.ssi_signo == SIGCHLD)
			reap_children(shim);
		else if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT)
			begin_stop(shim, "stop requested");
	}
	/* SIGCHLD coalesces; one extra reap costs nothing. */
	reap_children(shim);
}

static void drive_stop(struct shim *shim, int64_t now)
{
	int64_t stop_deadline =
		shim->stop_started_ns + (int64_t)shim->spec.stop_timeout_s * 1000000000LL;
	cleanup_error struct vg_error *err = NULL;
	if (now < stop_deadline && now >= shim->next_powerdown_ns) {
		/* Retried: a powerdown that arrives before the guest listens is silently lost. */
		if (shim->qmp.fd >= 0 && vg_qmp_execute(&shim->qmp, "system_powerdown", 1000, &err) < 0)
			vg_debug("sandbox %s: %s", shim->spec.id, err->msg);
		shim->next_powerdown_ns = now + POWERDOWN_RETRY_NS;
	} else if (now >= stop_deadline && !shim->quit_sent) {
		shim->quit_sent = true;
		shim->kill_at_ns = now + KILL_AFTER_QUIT_NS;
		if (shim->qmp.fd < 0 || vg_qmp_execute(&shim->qmp, "quit", 1000, &err) < 0)
			shim->kill_at_ns = now;
	} else if (shim->quit_sent && now >= shim->kill_at_ns) {
		kill(shim->qemu_pid, SIGKILL);
		shim->kill_at_ns = INT64_MAX;
	}
}

static int next_timeout_ms(const struct shim *shim, int64_t now)
{
	/* A one-second tick bounds every wait; stop steps may need an earlier wake-up. */
	int64_t next = now + 1000000000LL;
	if (shim->stop_requested) {
		int64_t step = shim->quit_sent ? shim->kill_at_ns : shim->next_powerdown_ns;
		if (step < next)
			next = step;
	}
	int64_t ms = (next - now) / 1000000;
	return ms < 0 ? 0 : (int)ms + 1;
}

static void run_until_qemu_exits(struct shim *shim)
{
	int64_t ready_deadline =
		vg_monotonic_ns() + (int64_t)shim->spec.ready_timeout_s * 1000000000LL;
	while (!shim->qemu_exited) {
		int64_t now = vg_monotonic_ns();
		if (shim->status.state == VG_SANDBOX_CREATING && !shim->stop_requested &&
		    now >= ready_deadline) {
			char reason[128];
			snprintf(reason, sizeof(reason),
				 "the guest did not report ready within %u s (see console.log)",
				 shim->spec.ready_timeout_s);
			fail(shim, reason);
			begin_teardown(shim);
		}
		if (shim->stop_requested)
			drive_stop(shim, now);
		struct pollfd fds[2] = { { .fd = shim->signal_fd, .events = POLLIN },
					 { .fd = shim->ready_fd, .events = POLLIN } };
		int pr = poll(fds, shim->ready_fd >= 0 ? 2 : 1, next_timeout_ms(shim, now));
		if (pr < 0 && errno != EINTR) {
			vg_err("sandbox %s: poll: %s", shim->spec.id, strerror(errno));
			kill(shim->qemu_pid, SIGKILL);
		}
		if (pr > 0 && (fds[0].revents & POLLIN))
			handle_signals(shim);
		if (pr > 0 && shim->ready_fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP)))
			read_ready_channel(shim);
	}
}

static void describe_qemu_exit(const struct shim *shim, struct vg_exit_record *rec)
{
	if (shim->qemu_pid <= 0)
		return;
	int status = shim->qemu_wait_status;
	rec->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	rec->signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

/* Undo in reverse order of setup; every step is best effort and keeps the first error. */
static void unwind(struct shim *shim, struct vg_error **first)
{
	vg_qmp_close(&shim->qmp);
	if (shim->ready_fd >= 0)
		close(shim->ready_fd);
	shim->ready_fd = -1;
	struct vg_error *tmp_err = NULL;
	if (shim->nat_added && vg_nat_remove(shim->spec.id, &tmp_err) < 0) {
		vg_warn("sandbox %s: %s", shim->spec.id, tmp_err->msg);
		vg_error_keep_first(first, TAKE_PTR(tmp_err));
	}
	shim->nat_added = false;
	vg_tap_close(&shim->tap);
	/* A group node that outlives the release (its device was on vfio-pci before us) goes
	 * back to root, as we found it. */
	for (size_t g = 0; shim->spec.qemu_uid >= 0 && g < shim->spec.n_gpus; g++) {
		char node[PATH_MAX + 32];
		snprintf(node, sizeof(node), "%s/vfio/%d", shim->spec.dev_root,
			 shim->spec.gpus[g].iommu_group);
		if (shim->spec.gpus[g].iommu_group >= 0 && chown(node, 0, 0) < 0 && errno != ENOENT)
			vg_warn("sandbox %s: give %s back to root: %s", shim->spec.id, node,
				strerror(errno));
	}
	if (shim->vfio != NULL) {
		char journal[PATH_MAX];
		if (vg_vfio_guard_release(shim->vfio, &tmp_err) < 0) {
			/* The journal stays: the agent replays it when it sees this sandbox end. */
			vg_err("sandbox %s: %s", shim->spec.id, tmp_err->msg);
			vg_error_keep_first(first, TAKE_PTR(tmp_err));
		} else if (vg_sandbox_file(&shim->paths, "bind-journal.json", journal,
					   sizeof(journal), NULL) == 0) {
			unlink(journal);
		}
		vg_vfio_guard_free(shim->vfio);
		shim->vfio = NULL;
	}
}

static void kill_qemu_now(struct shim *shim)
{
	if (shim->qemu_pid <= 0 || shim->qemu_exited)
		return;
	kill(shim->qemu_pid, SIGKILL);
	while (waitpid(shim->qemu_pid, &shim->qemu_wait_status, 0) < 0 && errno == EINTR)
		;
	shim->qemu_exited = true;
}

static int finish(struct shim *shim, struct vg_exit_record *rec)
{
	struct vg_error *cleanup_err = NULL;
	unwind(shim, &cleanup_err);
	if (cleanup_err != NULL) {
		char reason[600];
		snprintf(reason, sizeof(reason), "%s%scleanup failed: %s", shim->status.reason,
			 shim->status.reason[0] ? "; " : "", cleanup_err->msg);
		shim->failed = false;
		fail(shim, reason);
		vg_error_free(cleanup_err);
	}
	if (!shim->failed)
		set_state(shim, VG_SANDBOX_EXITED, NULL);
	/* The exit record comes last: whoever sees it may trust status.json to be final. */
	rec->exited_ns = vg_now_ns();
	snprintf(rec->reason, sizeof(rec->reason), "%s", shim->status.reason);
	cleanup_error struct vg_error *err = NULL;
	if (vg_exit_record_write(&shim->paths, rec, &err) < 0)
		vg_err("sandbox %s: %s", shim->spec.id, err->msg);
	return shim->failed ? 1 : 0;
}

static void settle_after_exit(struct shim *shim, struct vg_exit_record *rec)
{
	describe_qemu_exit(shim, rec);
	char reason[256];
	if (shim->failed)
		return;
	if (shim->stop_requested) {
		snprintf(shim->status.reason, sizeof(shim->status.reason), "stopped");
	} else if (rec->signal != 0) {
		snprintf(reason, sizeof(reason), "qemu exited (signal %d)", rec->signal);
		fail(shim, reason);
	} else if (rec->exit_code != 0) {
		snprintf(reason, sizeof(reason), "qemu exited (code %d); see qemu.log",
			 rec->exit_code);
		fail(shim, reason);
	} else {
		snprintf(shim->status.reason, sizeof(shim->status.reason), "guest powered off");
	}
}

int vg_shim_run(const struct vg_shim_options *options)
{
	struct shim *shim = calloc(1, sizeof(*shim));
	if (shim == NULL)
		return 1;
	shim->sync_fd = options->sync_fd;
	shim->signal_fd = -1;
	shim->ready_fd = -1;
	shim->tap.fd = -1;
	shim->qmp.fd = -1;
	struct vg_exit_record rec = { .exit_code = -1, .started_ns = vg_now_ns() };
	shim->status.created_ns = rec.started_ns;
	shim->status.shim_pid = getpid();
	vg_proc_start_time(getpid(), &shim->status.shim_start_time, NULL);

	cleanup_error struct vg_error *err = NULL;
	char spec_path[PATH_MAX];
	int ret = vg_sandbox_paths_init(options->dir, &shim->paths, &err);
	if (ret == 0)
		ret = vg_sandbox_file(&shim->paths, "spec.json", spec_path, sizeof(spec_path), &err);
	if (ret == 0)
		ret = vg_spec_load(spec_path, &shim->spec, &err);
	if (ret < 0) {
		/* Without a spec there is no sandbox to record: tell the caller and stop. */
		report_to_parent(shim, err);
		vg_err("%s", err->msg);
		free(shim);
		return 1;
	}
	set_state(shim, VG_SANDBOX_CREATING, "");
	ret = setup_signals(shim, &err);
	if (ret == 0)
		ret = bind_gpus(shim, &err);
	if (ret == 0)
		ret = create_tap(shim, &err);
	if (ret == 0)
		ret = start_qemu(shim, &err);
	if (ret == 0)
		set_state(shim, VG_SANDBOX_CREATING, "");
	if (ret == 0 && vg_qmp_connect(shim->paths.qmp_socket, 30000, &shim->qmp, &err) < 0)
		ret = -1;
	if (ret == 0)
		ret = connect_ready_channel(shim, &err);
	if (ret < 0) {
		report_to_parent(shim, err);
		fail(shim, err->msg);
		kill_qemu_now(shim);
		describe_qemu_exit(shim, &rec);
		int code = finish(shim, &rec);
		free(shim);
		return code;
	}
	report_to_parent(shim, NULL);
	run_until_qemu_exits(shim);
	settle_after_exit(shim, &rec);
	int code = finish(shim, &rec);
	if (shim->signal_fd >= 0)
		close(shim->signal_fd);
	free(shim);
	return code;
}

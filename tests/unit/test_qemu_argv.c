/* The QEMU argv builder: golden command lines, validation and escaping, and, with --real-qemu,
 * proof that QEMU 7.2 itself accepts what the builder emits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "shim/qemu_argv.h"

#ifndef VMGPU_SOURCE_DIR
#error "VMGPU_SOURCE_DIR must name the source tree, for the golden files"
#endif

#define GIB (1ull << 30)
#define MIB (1ull << 20)
#define TAP_FD_IN_GOLDEN 3

static void copy_text(char *dst, size_t size, const char *src)
{
	assert_true(strlen(src) < size);
	memcpy(dst, src, strlen(src) + 1);
}

static void set_gpu(struct vg_spec_gpu *gpu, const char *bdf, uint16_t device_id,
		    uint64_t bar_bytes)
{
	copy_text(gpu->bdf, sizeof(gpu->bdf), bdf);
	assert_int_equal(vg_bdf_parse(bdf, false, &gpu->addr, NULL), 0);
	gpu->vendor_id = 0x10de;
	gpu->device_id = device_id;
	gpu->iommu_group = -1;
	gpu->bar_bytes = bar_bytes;
}

static void add_companion(struct vg_spec_gpu *gpu, const char *bdf)
{
	assert_int_equal(vg_bdf_parse(bdf, false, &gpu->companions[gpu->n_companions++], NULL), 0);
}

/* The demo sandbox of the docs; GPU cases are an H100 host (x86_64) or a GB10-like one. */
static void fill_spec(struct vg_sandbox_spec *spec, enum vg_arch arch, enum vg_accel accel,
		      size_t n_gpus)
{
	bool x86 = arch == VG_ARCH_X86_64;
	memset(spec, 0, sizeof(*spec));
	copy_text(spec->id, sizeof(spec->id), "demo-1");
	spec->arch = arch;
	spec->accel = accel;
	spec->gic_version = accel == VG_ACCEL_KVM ? 0 : 3;
	spec->vcpus = 4;
	spec->memory_mib = 2048;
	copy_text(spec->kernel, sizeof(spec->kernel),
		  x86 ? "/var/lib/vmgpu/guest/vmlinuz-amd64" : "/var/lib/vmgpu/guest/Image-arm64");
	copy_text(spec->initrd, sizeof(spec->initrd),
		  x86 ? "/var/lib/vmgpu/guest/initrd-amd64.img" :
			"/var/lib/vmgpu/guest/initrd-arm64.img");
	uint64_t bar_bytes = x86 ? 128 * GIB + 48 * MIB : 64 * GIB + 48 * MIB;
	static const char *const x86_bdfs[] = { "0000:01:00.0", "0000:41:00.0", "0000:81:00.0",
						"0000:c1:00.0" };
	static const char *const arm_bdfs[] = { "000f:01:00.0", "0011:01:00.0", "0013:01:00.0",
						"0015:01:00.0" };
	assert_true(n_gpus <= 4);
	for (size_t i = 0; i < n_gpus; i++)
		set_gpu(&spec->gpus[i], x86 ? x86_bdfs[i] : arm_bdfs[i], x86 ? 0x2330 : 0x2e12,
			bar_bytes);
	spec->n_gpus = n_gpus;
	if (n_gpus == 4) {
		add_companion(&spec->gpus[0], x86 ? "0000:01:00.1" : "000f:01:00.1");
		add_companion(&spec->gpus[0], x86 ? "0000:01:00.2" : "000f:01:00.2");
		spec->hugepages = true;
		spec->prealloc = true;
	}
	if (n_gpus > 0) {
		copy_text(spec->modules[0], sizeof(spec->modules[0]), "nvidia");
		copy_text(spec->modules[1], sizeof(spec->modules[1]), "nvidia_uvm");
		spec->n_modules = 2;
		copy_text(spec->cmdline_extra, sizeof(spec->cmdline_extra), "quiet loglevel=4");
		spec->network.enabled = true;
		spec->network.host_addr = 0x0ac80001; /* 10.200.0.1 */
		spec->network.guest_addr = 0x0ac80002;
		spec->network.prefix_len = 30;
	}
}

static void fill_paths(struct vg_sandbox_paths *paths, const char *dir)
{
	memset(paths, 0, sizeof(*paths));
	snprintf(paths->dir, sizeof(paths->dir), "%s", dir);
	snprintf(paths->qmp_socket, sizeof(paths->qmp_socket), "%s/qmp.sock", dir);
	snprintf(paths->ready_socket, sizeof(paths->ready_socket), "%s/ready.sock", dir);
	snprintf(paths->console_log, sizeof(paths->console_log), "%s/console.log", dir);
	snprintf(paths->qemu_pidfile, sizeof(paths->qemu_pidfile), "%s/qemu.pid", dir);
}

static char *read_whole_file(const char *path)
{
	cleanup_fclose FILE *f = fopen(path, "re");
	if (f == NULL)
		return NULL;
	char *text = NULL;
	size_t len = 0;
	cleanup_fclose FILE *out = open_memstream(&text, &len);
	assert_non_null(out);
	char buf[4096];
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		fwrite(buf, 1, n, out);
	assert_int_equal(fclose(TAKE_PTR(out)), 0);
	return text;
}

/* VMGPU_UPDATE_GOLDEN=1 rewrites the file instead, so a change shows up as a reviewable diff. */
static void check_golden(const char *name, const char *line)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/tests/golden/qemu-argv-%s.txt", VMGPU_SOURCE_DIR, name);
	const char *update = getenv("VMGPU_UPDATE_GOLDEN");
	if (update != NULL && strcmp(update, "1") == 0) {
		cleanup_fclose FILE *f = fopen(path, "we");
		assert_non_null(f);
		fprintf(f, "%s\n", line);
		assert_int_equal(fclose(TAKE_PTR(f)), 0);
		print_message("rewrote %s\n", path);
		return;
	}
	cleanup_free char *expected = read_whole_file(path);
	if (expected == NULL)
		fail_msg("%s is missing; run with VMGPU_UPDATE_GOLDEN=1 to create it", path);
	size_t len = strlen(expected);
	assert_true(len > 0 && expected[len - 1] == '\n');
	expected[len - 1] = '\0';
	assert_string_equal(line, expected);
}

/* Builds and joins the argv; any error fails the test. */
static char *build_line(const struct vg_sandbox_spec *spec, const char *dir, int tap_fd)
{
	struct vg_sandbox_paths paths;
	fill_paths(&paths, dir);
	struct vg_qemu_fds fds = { .tap_fd = tap_fd };
	cleanup_argv struct vg_argv argv = { 0 };
	struct vg_error *err = NULL;
	if (vg_qemu_build_argv(spec, &paths, &fds, &argv, &err) < 0)
		fail_msg("%s", err->msg);
	assert_null(argv.argv[argv.argc]);
	char *line = vg_argv_join(&argv);
	assert_non_null(line);
	return line;
}

static void golden_case(enum vg_arch arch, enum vg_accel accel, size_t n_gpus, const char *name)
{
	struct vg_sandbox_spec spec;
	fill_spec(&spec, arch, accel, n_gpus);
	cleanup_free char *line = build_line(&spec, "/run/vmgpu/sandboxes/demo-1",
					     spec.network.enabled ? TAP_FD_IN_GOLDEN : -1);
	check_golden(name, line);
}

static void golden_x86_64(void **state)
{
	(void)state;
	golden_case(VG_ARCH_X86_64, VG_ACCEL_TCG, 0, "x86_64-0gpu");
	golden_case(VG_ARCH_X86_64, VG_ACCEL_TCG, 1, "x86_64-1gpu");
	golden_case(VG_ARCH_X86_64, VG_ACCEL_TCG, 4, "x86_64-4gpu");
	golden_case(VG_ARCH_X86_64, VG_ACCEL_KVM, 1, "x86_64-1gpu-kvm");
}

static void golden_aarch64(void **state)
{
	(void)state;
	golden_case(VG_ARCH_AARCH64, VG_ACCEL_TCG, 0, "aarch64-0gpu");
	golden_case(VG_ARCH_AARCH64, VG_ACCEL_TCG, 1, "aarch64-1gpu");
	golden_case(VG_ARCH_AARCH64, VG_ACCEL_TCG, 4, "aarch64-4gpu");
	golden_case(VG_ARCH_AARCH64, VG_ACCEL_KVM, 1, "aarch64-1gpu-kvm");
}

static void escapes_commas_and_refuses_control_characters(void **state)
{
	(void)state;
	char out[16];
	struct vg_error *err = NULL;
	assert_int_equal(vg_qemu_escape_value("a,b", out, sizeof(out), NULL), 0);
	assert_string_equal(out, "a,,b");
	assert_int_equal(vg_qemu_escape_value(",,", out, sizeof(out), NULL), 0);
	assert_string_equal(out, ",,,,");
	assert_int_equal(vg_qemu_escape_value("a,b", out, 4, &err), -ENAMETOOLONG);
	vg_error_free(TAKE_PTR(err));
	assert_int_equal(vg_qemu_escape_value("a\nb", out, sizeof(out), &err), -EINVAL);
	assert_non_null(strstr(err->msg, "0x0a at offset 1"));
	vg_error_free(err);
}

/* Builds the x86_64 1-GPU demo with one change applied; returns the error message, or NULL. */
typedef void (*spec_change)(struct vg_sandbox_spec *spec, struct vg_sandbox_paths *paths);
/* What build_error hands over; a change may alter it. */
static struct vg_qemu_fds error_case_fds;

static char *build_error(spec_change change)
{
	struct vg_sandbox_spec spec;
	struct vg_sandbox_paths paths;
	fill_spec(&spec, VG_ARCH_X86_64, VG_ACCEL_TCG, 1);
	fill_paths(&paths, "/run/vmgpu/sandboxes/demo-1");
	error_case_fds.tap_fd = TAP_FD_IN_GOLDEN;
	change(&spec, &paths);
	struct vg_argv argv = { 0 };
	struct vg_error *err = NULL;
	int r = vg_qemu_build_argv(&spec, &paths, &error_case_fds, &argv, &err);
	if (r == 0) {
		assert_null(err);
		vg_argv_free(&argv);
		return NULL;
	}
	/* A failed build leaves the output alone. */
	assert_null(argv.argv);
	assert_non_null(err);
	assert_int_equal(-r, err->code);
	char *msg = strdup(err->msg);
	vg_error_free(err);
	return msg;
}

/* One spec change per bad case; s is the spec, p the paths. */
#define SPEC_CHANGE(name, ...)                                                                     \
	static void name(struct vg_sandbox_spec *s, struct vg_sandbox_paths *p)                    \
	{                                                                                          \
		(void)s;                                                                           \
		(void)p;                                                                           \
		__VA_ARGS__;                                                                       \
	}

SPEC_CHANGE(no_change, )
SPEC_CHANGE(newline_in_qmp_path, copy_text(p->qmp_socket, sizeof(p->qmp_socket), "/x\n/q.sock"))
SPEC_CHANGE(bdf_with_option, copy_text(s->gpus[0].bdf, sizeof(s->gpus[0].bdf), "0000:01:00.0,x=1"))
SPEC_CHANGE(no_vcpus, s->vcpus = 0)
SPEC_CHANGE(too_many_vcpus, s->vcpus = 257)
SPEC_CHANGE(tiny_memory, s->memory_mib = 32)
SPEC_CHANGE(huge_memory, s->memory_mib = (1u << 22) + 1)
SPEC_CHANGE(seventeen_gpus, s->n_gpus = 17)
SPEC_CHANGE(no_kernel, s->kernel[0] = '\0')
SPEC_CHANGE(id_with_space, copy_text(s->id, sizeof(s->id), "demo 1"))
SPEC_CHANGE(module_with_quote, copy_text(s->modules[1], sizeof(s->modules[1]), "nv\"idia"))
SPEC_CHANGE(extra_with_newline,
	    copy_text(s->cmdline_extra, sizeof(s->cmdline_extra), "quiet\ninit=/bin/sh"))
SPEC_CHANGE(gpu_twice, s->gpus[1] = s->gpus[0]; s->n_gpus = 2)
SPEC_CHANGE(companion_is_gpu, add_companion(&s->gpus[0], "0000:01:00.0"))
SPEC_CHANGE(network_without_tap, error_case_fds.tap_fd = -1)
SPEC_CHANGE(tap_without_network, s->network.enabled = false)
SPEC_CHANGE(guest_outside_prefix, s->network.guest_addr = 0x0ac80005)
SPEC_CHANGE(host_gic_under_tcg, s->arch = VG_ARCH_AARCH64; s->gic_version = 0)
SPEC_CHANGE(arm_bars_beyond_512g, s->arch = VG_ARCH_AARCH64; s->gpus[0].bar_bytes = 600 * GIB)
SPEC_CHANGE(socket_path_unterminated, memset(p->ready_socket, 'r', sizeof(p->ready_socket)))

static void expect_error(spec_change change, const char *needle)
{
	cleanup_free char *msg = build_error(change);
	if (msg == NULL)
		fail_msg("expected an error mentioning '%s', got none", needle);
	if (strstr(msg, needle) == NULL)
		fail_msg("expected '%s' in: %s", needle, msg);
}

static void refuses_bad_specs_naming_the_field(void **state)
{
	(void)state;
	expect_error(newline_in_qmp_path, "qmp_socket: contains the control character 0x0a");
	expect_error(bdf_with_option, "gpus[0].bdf: '0000:01:00.0,x=1' is not a PCI address");
	expect_error(no_vcpus, "vcpus: 0 is out of range");
	expect_error(too_many_vcpus, "vcpus: 257");
	expect_error(tiny_memory, "memory_mib: 32 is out of range");
	expect_error(huge_memory, "memory_mib: 4194305");
	expect_error(seventeen_gpus, "gpus: 17 GPUs, at most 16");
	expect_error(no_kernel, "kernel: missing");
	expect_error(id_with_space, "id: 'demo 1' is not a sandbox id");
	expect_error(module_with_quote, "modules[1]:");
	expect_error(extra_with_newline, "cmdline_extra: contains the control character 0x0a");
	expect_error(gpu_twice, "0000:01:00.0 is assigned more than once");
	expect_error(companion_is_gpu, "gpus[0].companions[0]: 0000:01:00.0 is the GPU itself");
	expect_error(host_gic_under_tcg, "gic_version: 0 (host) needs KVM");
	expect_error(arm_bars_beyond_512g, "more than the 512 GiB");
	expect_error(socket_path_unterminated, "ready_socket: not terminated within its 108 bytes");
	expect_error(network_without_tap, "tap_fd: the network is on but no TAP fd came");
	expect_error(tap_without_network, "tap_fd: 3 passed for a sandbox without network");
	expect_error(guest_outside_prefix, "share the /30 prefix");
	assert_null(build_error(no_change));
}

static void expect_in_line(const char *line, const char *needle)
{
	if (strstr(line, needle) == NULL)
		fail_msg("expected '%s' in: %s", needle, line);
}

static void commas_in_paths_follow_each_option_rule(void **state)
{
	(void)state;
	struct vg_sandbox_spec spec;
	fill_spec(&spec, VG_ARCH_X86_64, VG_ACCEL_TCG, 0);
	cleanup_free char *line = build_line(&spec, "/run/a,b", -1);
	expect_in_line(line, " unix:/run/a,,b/qmp.sock,server=on,wait=off ");
	expect_in_line(line, " file,id=console0,path=/run/a,,b/console.log ");
	expect_in_line(line, " socket,id=ready0,path=/run/a,,b/ready.sock,server=on,wait=off ");
	expect_in_line(line, " -pidfile /run/a,b/qemu.pid "); /* taken verbatim */
}

static void companions_keep_their_slot_functions(void **state)
{
	(void)state;
	struct vg_sandbox_spec spec;
	fill_spec(&spec, VG_ARCH_X86_64, VG_ACCEL_KVM, 1);
	spec.network.enabled = false;
	add_companion(&spec.gpus[0], "0000:01:00.3");
	add_companion(&spec.gpus[0], "0000:02:00.0"); /* another slot: lowest free function */
	cleanup_free char *line = build_line(&spec, "/run/x", -1);
	expect_in_line(line, " vfio-pci,host=0000:01:00.0,id=gpu0,bus=rp0,addr=00.0,multifunction");
	expect_in_line(line, " vfio-pci,host=0000:01:00.3,id=gpu0_f3,bus=rp0,addr=00.3");
	expect_in_line(line, " vfio-pci,host=0000:02:00.0,id=gpu0_f1,bus=rp0,addr=00.1");
}

static void mac_follows_the_id(void **state)
{
	(void)state;
	struct vg_sandbox_spec spec;
	fill_spec(&spec, VG_ARCH_X86_64, VG_ACCEL_TCG, 1);
	cleanup_free char *first = build_line(&spec, "/run/x", 5);
	cleanup_free char *again = build_line(&spec, "/run/x", 5);
	copy_text(spec.id, sizeof(spec.id), "demo-2");
	cleanup_free char *other = build_line(&spec, "/run/x", 5);
	assert_string_equal(first, again);
	const char *mac = strstr(first, "mac=52:54:00:");
	const char *other_mac = strstr(other, "mac=52:54:00:");
	assert_non_null(mac);
	assert_non_null(other_mac);
	assert_memory_not_equal(mac, other_mac, strlen("mac=52:54:00:00:00:00"));
}

static void join_quotes_what_a_shell_would_split(void **state)
{
	(void)state;
	cleanup_argv struct vg_argv argv = { 0 };
	const char *args[] = { "qemu", "-append", "a b", "romfile=", "", "it's" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(args); i++)
		assert_int_equal(vg_argv_add(&argv, args[i], NULL), 0);
	cleanup_free char *line = vg_argv_join(&argv);
	assert_string_equal(line, "qemu -append 'a b' romfile= '' 'it'\\''s'");
	vg_argv_free(NULL);
}

/* Real QEMU. vfio-pci devices cannot be instantiated here (no VFIO, no GPU), so the GPU layouts
 * are held by the golden files alone; these runs prove that QEMU 7.2 accepts everything else the
 * builder emits: start it with -S and the boot options removed, talk QMP, quit, expect exit 0. */

#define QEMU_DEADLINE_MS 20000

struct qemu_run {
	char dir[sizeof("/tmp/vg-qemu-argv-XXXXXX")];
	pid_t pid;
	int tap_fd;
};

static int qemu_run_setup(void **state)
{
	struct qemu_run *run = calloc(1, sizeof(*run));
	if (run == NULL)
		return -1;
	run->pid = -1;
	run->tap_fd = -1;
	memcpy(run->dir, "/tmp/vg-qemu-argv-XXXXXX", sizeof(run->dir));
	if (mkdtemp(run->dir) == NULL) {
		free(run);
		return -1;
	}
	*state = run;
	return 0;
}

/* Runs after a failed assertion too, which skips the test's own scope guards. */
static int qemu_run_teardown(void **state)
{
	struct qemu_run *run = *state;
	if (run->pid > 0) {
		kill(run->pid, SIGKILL);
		waitpid(run->pid, NULL, 0);
	}
	if (run->tap_fd >= 0)
		close(run->tap_fd);
	cleanup_dir DIR *d = opendir(run->dir);
	for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			unlinkat(dirfd(d), e->d_name, 0);
	rmdir(run->dir);
	free(run);
	return 0;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A TAP in a network namespace of this test process's own, so the host sees nothing; returns
 * the fd or -errno. */
static int open_tap_in_private_netns(void)
{
	static bool unshared;
	if (!unshared && unshare(CLONE_NEWNET) < 0)
		return -errno;
	unshared = true;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI };
	copy_text(ifr.ifr_name, sizeof(ifr.ifr_name), "vgtest%d");
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		int saved = errno;
		close(fd);
		return -saved;
	}
	return fd;
}

static void fail_with_qemu_log(const struct qemu_run *run, const char *what)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/qemu.log", run->dir);
	cleanup_free char *log = read_whole_file(path);
	fail_msg("%s; QEMU said: %s", what, log != NULL ? log : "(no log)");
}

/* The child exits 127 when exec finds no such binary. */
static int connect_qmp(struct qemu_run *run, const char *binary, const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	copy_text(addr.sun_path, sizeof(addr.sun_path), path);
	for (long long deadline = now_ms() + QEMU_DEADLINE_MS; now_ms() < deadline;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(fd >= 0);
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
			return fd;
		close(fd);
		int status;
		if (waitpid(run->pid, &status, WNOHANG) == run->pid) {
			run->pid = -1;
			if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
				print_message("skipped: %s is not installed\n", binary);
				skip();
			}
			fail_with_qemu_log(run, "QEMU exited before its QMP socket came up");
		}
		usleep(20 * 1000);
	}
	fail_with_qemu_log(run, "QMP socket never came up");
	return -1;
}

/* Returns the reply line (a "return" or an "error"), skipping events. */
static char *qmp_command(const struct qemu_run *run, FILE *in, int fd, const char *command)
{
	size_t len = strlen(command);
	assert_int_equal(write(fd, command, len), (ssize_t)len);
	char *line = NULL;
	size_t cap = 0;
	for (int lines = 0; lines < 64; lines++) {
		if (getline(&line, &cap, in) < 0) {
			free(line);
			fail_with_qemu_log(run, "QMP closed or timed out before replying");
		}
		if (strstr(line, "\"error\"") != NULL) {
			fail_msg("QMP refused %s: %s", command, line);
		}
		if (strstr(line, "\"return\"") != NULL)
			return line;
	}
	fail_msg("no QMP reply to %s", command);
	return NULL;
}

static void expect_device_type(const struct qemu_run *run, FILE *in, int fd, const char *id,
			       const char *type)
{
	char command[256];
	snprintf(command, sizeof(command),
		 "{\"execute\":\"qom-get\",\"arguments\":{\"path\":\"/machine/peripheral/%s\","
		 "\"property\":\"type\"}}\n",
		 id);
	char expected[128];
	snprintf(expected, sizeof(expected), "{\"return\": \"%s\"}", type);
	cleanup_free char *reply = qmp_command(run, in, fd, command);
	if (strstr(reply, expected) == NULL)
		fail_msg("device %s: expected %s, QMP said %s", id, expected, reply);
}

static void wait_for_exit_status_zero(struct qemu_run *run)
{
	int status = 0;
	pid_t got = 0;
	for (long long deadline = now_ms() + QEMU_DEADLINE_MS; got == 0 && now_ms() < deadline;) {
		got = waitpid(run->pid, &status, WNOHANG);
		if (got == 0)
			usleep(10 * 1000);
	}
	if (got != run->pid)
		fail_with_qemu_log(run, "QEMU did not exit after quit");
	run->pid = -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_with_qemu_log(run, "QEMU did not exit with status 0");
}

static void qemu_accepts_the_argv(void **state, enum vg_arch arch, bool with_tap)
{
	struct qemu_run *run = *state;
	const char *binary = arch == VG_ARCH_X86_64 ? "qemu-system-x86_64" : "qemu-system-aarch64";
	if (with_tap) {
		run->tap_fd = open_tap_in_private_netns();
		if (run->tap_fd < 0) {
			print_message("skipped: a TAP needs root, network namespaces and "
				      "/dev/net/tun: %s\n",
				      strerror(-run->tap_fd));
			skip();
		}
	}
	struct vg_sandbox_spec spec;
	struct vg_sandbox_paths paths;
	fill_spec(&spec, arch, VG_ACCEL_TCG, 0);
	spec.memory_mib = 256;
	spec.prealloc = true; /* touches guest RAM under -sandbox resourcecontrol=deny */
	spec.network.enabled = with_tap;
	spec.network.host_addr = 0x0ac80001;
	spec.network.guest_addr = 0x0ac80002;
	spec.network.prefix_len = 30;
	fill_paths(&paths, run->dir);
	struct vg_qemu_fds fds = { .tap_fd = run->tap_fd };
	struct vg_argv built = { 0 };
	struct vg_error *err = NULL;
	if (vg_qemu_build_argv(&spec, &paths, &fds, &built, &err) < 0)
		fail_msg("%s", err->msg);

	/* No guest runs under -S; the boot options would only need a kernel file to load. */
	struct vg_argv argv = { 0 };
	for (size_t i = 0; i < built.argc; i++) {
		const char *arg = built.argv[i];
		if (strcmp(arg, "-kernel") == 0 || strcmp(arg, "-initrd") == 0 ||
		    strcmp(arg, "-append") == 0)
			i++;
		else
			assert_int_equal(vg_argv_add(&argv, arg, NULL), 0);
	}
	assert_int_equal(vg_argv_add(&argv, "-S", NULL), 0);
	vg_argv_free(&built);

	char log_path[PATH_MAX];
	snprintf(log_path, sizeof(log_path), "%s/qemu.log", run->dir);
	run->pid = fork();
	assert_true(run->pid >= 0);
	if (run->pid == 0) {
		int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (log < 0 || null < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 ||
		    dup2(log, 2) < 0)
			_exit(126);
		if (run->tap_fd >= 0 && fcntl(run->tap_fd, F_SETFD, 0) < 0)
			_exit(126);
		execvp(argv.argv[0], argv.argv);
		_exit(127);
	}
	vg_argv_free(&argv);

	cleanup_close int qmp = connect_qmp(run, binary, paths.qmp_socket);
	struct timeval timeout = { .tv_sec = QEMU_DEADLINE_MS / 1000 };
	assert_int_equal(setsockopt(qmp, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)), 0);
	cleanup_fclose FILE *in = fdopen(dup(qmp), "r");
	assert_non_null(in);
	cleanup_free char *greeting = NULL;
	size_t cap = 0;
	assert_true(getline(&greeting, &cap, in) > 0);
	assert_non_null(strstr(greeting, "\"QMP\""));

	cleanup_free char *pidfile = read_whole_file(paths.qemu_pidfile);
	assert_non_null(pidfile);
	assert_int_equal(atoi(pidfile), run->pid);

	free(qmp_command(run, in, qmp, "{\"execute\":\"qmp_capabilities\"}\n"));
	/* Under -S no firmware has numbered the buses, so query-pci cannot see behind the root
	 * ports; the devices' QOM types show they exist under the ids the builder gave. */
	expect_device_type(run, in, qmp, "rp-vser", "pcie-root-port");
	expect_device_type(run, in, qmp, "vser0", "virtio-serial-pci");
	if (with_tap)
		expect_device_type(run, in, qmp, "nic0", "virtio-net-pci");
	cleanup_free char *chardevs =
		qmp_command(run, in, qmp, "{\"execute\":\"query-chardev\"}\n");
	assert_non_null(strstr(chardevs, "\"label\": \"ready0\""));
	assert_non_null(strstr(chardevs, "\"label\": \"console0\""));
	free(qmp_command(run, in, qmp, "{\"execute\":\"quit\"}\n"));
	wait_for_exit_status_zero(run);

	/* A deprecation or an ignored option shows up as a warning, which a later QEMU turns into
	 * an error; none is expected. */
	cleanup_free char *log = read_whole_file(log_path);
	assert_non_null(log);
	if (log[0] != '\0')
		fail_msg("QEMU warned: %s", log);
}

#define QEMU_CASE(name, arch, with_tap)                                                            \
	static void name(void **state)                                                             \
	{                                                                                          \
		qemu_accepts_the_argv(state, arch, with_tap);                                      \
	}
QEMU_CASE(x86_64_accepts_the_argv, VG_ARCH_X86_64, false)
QEMU_CASE(aarch64_accepts_the_argv, VG_ARCH_AARCH64, false)
QEMU_CASE(x86_64_accepts_the_argv_with_a_tap, VG_ARCH_X86_64, true)
QEMU_CASE(aarch64_accepts_the_argv_with_a_tap, VG_ARCH_AARCH64, true)

static int run_real_qemu_tests(void)
{
#define WITH_RUN(test) cmocka_unit_test_setup_teardown(test, qemu_run_setup, qemu_run_teardown)
	const struct CMUnitTest tests[] = {
		WITH_RUN(x86_64_accepts_the_argv),
		WITH_RUN(aarch64_accepts_the_argv),
		WITH_RUN(x86_64_accepts_the_argv_with_a_tap),
		WITH_RUN(aarch64_accepts_the_argv_with_a_tap),
	};
	return cmocka_run_group_tests_name("real_qemu", tests, NULL, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--real-qemu") == 0)
		return run_real_qemu_tests();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(golden_x86_64),
		cmocka_unit_test(golden_aarch64),
		cmocka_unit_test(escapes_commas_and_refuses_control_characters),
		cmocka_unit_test(refuses_bad_specs_naming_the_field),
		cmocka_unit_test(commas_in_paths_follow_each_option_rule),
		cmocka_unit_test(companions_keep_their_slot_functions),
		cmocka_unit_test(mac_follows_the_id),
		cmocka_unit_test(join_quotes_what_a_shell_would_split),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

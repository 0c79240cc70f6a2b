/*
 * The fake kernel (tests/mock/sysfs_mock.c) acts out PCI bind, unbind, drivers_probe and
 * driver_override on a tree in a temp dir. These tests drive it through vg_sysfs_write, the path
 * the product uses, and look at the outcome on disk. Run with the mock in LD_PRELOAD (CTest does).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/sysfs.h"
#include "tests/mock/fixture_tree.h"

#define GPU "0000:01:00.0"
#define GPU_AUDIO "0000:01:00.1"
#define NIC "0000:02:00.0"
/* ---- the tree every test starts from --------------------------------------------------------- */

static void tree_make(struct fixture_tree *t)
{
	fixture_tree_make(t);
	static const char *const drivers[] = { "nvidia", "snd_hda_intel", "vfio-pci", "e1000e" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(drivers); i++)
		fixture_tree_add_driver(t, drivers[i]);
	static const struct fixture_device devices[] = {
		{ .bdf = GPU, .driver = "nvidia", .group = 14, .native = "nvidia" },
		{ .bdf = GPU_AUDIO, .driver = "snd_hda_intel", .group = 14,
		  .native = "snd_hda_intel" },
		{ .bdf = NIC, .group = -1, .native = "e1000e" }, /* no IOMMU group, unbound */
	};
	for (size_t i = 0; i < VG_ARRAY_SIZE(devices); i++)
		fixture_tree_add_device(t, &devices[i]);
}

static int setup(void **state)
{
	struct fixture_tree *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	fixture_mock_env_clear(); /* build the tree with the mock idle */
	tree_make(t);
	fixture_mock_env_use(t);
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct fixture_tree *t = *state;
	fixture_mock_env_clear();
	fixture_tree_remove(t);
	free(t);
	return 0;
}

static int check_preloaded(void **state)
{
	(void)state;
	const char *preload = getenv("LD_PRELOAD");
	if (preload == NULL || strstr(preload, "vgsysfsmock") == NULL) {
		fprintf(stderr, "test_sysfs_mock needs LD_PRELOAD=libvgsysfsmock.so "
				"(CTest sets it)\n");
		return -1;
	}
	return 0;
}

/* ---- looking at the outcome ------------------------------------------------------------------ */

/* One control write through the product's path; returns 0 or the errno it failed with. */
static int sysfs_write(const struct fixture_tree *t, const char *rel, const char *value)
{
	cleanup_error struct vg_error *err = NULL;
	int ret = vg_sysfs_write(&t->sysfs, rel, value, &err);
	if (ret == 0) {
		assert_null(err);
		return 0;
	}
	assert_int_equal(-ret, vg_error_code(err));
	return vg_error_code(err);
}

/* In a forked child: cmocka's asserts would unwind into the parent's runner, so none here. */
static void child_write_and_exit(const struct fixture_tree *t, const char *rel, const char *value)
{
	struct vg_error *err = NULL;
	int ret = vg_sysfs_write(&t->sysfs, rel, value, &err);
	_exit(ret == 0 ? 0 : 1);
}

static void wait_for_success(pid_t pid)
{
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- the libvirt sequence, both ways --------------------------------------------------------- */

static void test_libvirt_round_trip(void **state)
{
	struct fixture_tree *t = *state;
	assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
	assert_false(fixture_vfio_node_exists(t, 14));

	assert_int_equal(sysfs_write(t, "bus/pci/devices/" GPU "/driver_override", "vfio-pci"), 0);
	assert_string_equal(fixture_override_of(t, GPU), "vfio-pci\n");
	/* An override alone moves nothing. */
	assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/unbind", GPU), 0);
	assert_string_equal(fixture_driver_of(t, GPU), "");
	assert_false(fixture_driver_lists(t, "nvidia", GPU));
	assert_int_equal(sysfs_write(t, "bus/pci/drivers_probe", GPU), 0);
	assert_string_equal(fixture_driver_of(t, GPU), "vfio-pci");
	assert_true(fixture_driver_lists(t, "vfio-pci", GPU));
	assert_true(fixture_vfio_node_exists(t, 14));

	assert_int_equal(sysfs_write(t, "bus/pci/drivers/vfio-pci/unbind", GPU), 0);
	assert_false(fixture_vfio_node_exists(t, 14));
	assert_false(fixture_driver_lists(t, "vfio-pci", GPU));
	assert_int_equal(sysfs_write(t, "bus/pci/devices/" GPU "/driver_override", "\n"), 0);
	assert_string_equal(fixture_override_of(t, GPU), "(null)\n");
	assert_int_equal(sysfs_write(t, "bus/pci/drivers_probe", GPU), 0);
	assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
	assert_true(fixture_driver_lists(t, "nvidia", GPU));
	assert_false(fixture_vfio_node_exists(t, 14));

	assert_string_equal(fixture_log(t), "override vfio-pci " GPU " ok\n"
				       "unbind nvidia " GPU " ok\n"
				       "probe vfio-pci " GPU " ok\n"
				       "unbind vfio-pci " GPU " ok\n"
				       "override (null) " GPU " ok\n"
				       "probe nvidia " GPU " ok\n");
}

/* /dev/vfio/N belongs to the group: it stays while any member is still on vfio-pci. */
static void test_group_node_lives_while_a_member_is_bound(void **state)
{
	struct fixture_tree *t = *state;
	static const char *const members[][2] = { { GPU, "nvidia" },
						  { GPU_AUDIO, "snd_hda_intel" } };
	for (size_t i = 0; i < VG_ARRAY_SIZE(members); i++) {
		char rel[PATH_MAX];
		snprintf(rel, sizeof(rel), "bus/pci/devices/%s/driver_override", members[i][0]);
		assert_int_equal(sysfs_write(t, rel, "vfio-pci\n"), 0);
		snprintf(rel, sizeof(rel), "bus/pci/drivers/%s/unbind", members[i][1]);
		assert_int_equal(sysfs_write(t, rel, members[i][0]), 0);
		assert_int_equal(sysfs_write(t, "bus/pci/drivers_probe", members[i][0]), 0);
		assert_string_equal(fixture_driver_of(t, members[i][0]), "vfio-pci");
	}
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/vfio-pci/unbind", GPU), 0);
	assert_true(fixture_vfio_node_exists(t, 14));
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/vfio-pci/unbind", GPU_AUDIO), 0);
	assert_false(fixture_vfio_node_exists(t, 14));
}

/* ---- the kernel's refusals ------------------------------------------------------------------- */

static void test_bind_of_a_bound_device_is_ebusy(void **state)
{
	struct fixture_tree *t = *state;
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/vfio-pci/bind", GPU), EBUSY);
	assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
	assert_false(fixture_driver_lists(t, "vfio-pci", GPU));
	assert_false(fixture_vfio_node_exists(t, 14));
	assert_string_equal(fixture_log(t), "bind vfio-pci " GPU " EBUSY\n");
}

static void test_bind_to_vfio_without_iommu_group_is_einval(void **state)
{
	struct fixture_tree *t = *state;
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/vfio-pci/bind", NIC), EINVAL);
	assert_string_equal(fixture_driver_of(t, NIC), "");
	assert_false(fixture_driver_lists(t, "vfio-pci", NIC));
	/* The plain driver binds fine. */
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/e1000e/bind", NIC), 0);
	assert_string_equal(fixture_driver_of(t, NIC), "e1000e");
}

/* As in the kernel: a failed probe during drivers_probe is only logged; the write succeeds. */
static void test_probe_to_vfio_without_iommu_group_leaves_it_unbound(void **state)
{
	struct fixture_tree *t = *state;
	assert_int_equal(sysfs_write(t, "bus/pci/devices/" NIC "/driver_override", "vfio-pci"), 0);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers_probe", NIC), 0);
	assert_string_equal(fixture_driver_of(t, NIC), "");
	assert_non_null(strstr(fixture_log(t), "probe - " NIC " ok vfio-pci=EINVAL\n"));
}

static void test_bind_against_the_override_is_enodev(void **state)
{
	struct fixture_tree *t = *state;
	assert_int_equal(sysfs_write(t, "bus/pci/devices/" NIC "/driver_override", "vfio-pci"), 0);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/e1000e/bind", NIC), ENODEV);
	assert_string_equal(fixture_driver_of(t, NIC), "");
}

static void test_unbind_from_the_wrong_driver_is_enodev(void **state)
{
	struct fixture_tree *t = *state;
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/vfio-pci/unbind", GPU), ENODEV);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/unbind", "0000:09:00.0"), ENODEV);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/unbind", "../../x"), ENODEV);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers_probe", "0000:09:00.0"), ENODEV);
	assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
}

/* With an override naming a driver that is not loaded, the kernel leaves the device unbound. */
static void test_probe_with_override_of_absent_driver_stays_unbound(void **state)
{
	struct fixture_tree *t = *state;
	assert_int_equal(sysfs_write(t, "bus/pci/devices/" GPU "/driver_override", "nouveau"), 0);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/unbind", GPU), 0);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers_probe", GPU), 0);
	assert_string_equal(fixture_driver_of(t, GPU), "");
	/* And a probe of a bound device changes nothing. */
	assert_int_equal(sysfs_write(t, "bus/pci/drivers_probe", GPU_AUDIO), 0);
	assert_string_equal(fixture_driver_of(t, GPU_AUDIO), "snd_hda_intel");
}

/* ---- the forms the product may use ----------------------------------------------------------- */

static void test_unbind_through_the_device_driver_link(void **state)
{
	struct fixture_tree *t = *state;
	assert_int_equal(sysfs_write(t, "bus/pci/devices/" GPU "/driver/unbind", GPU), 0);
	assert_string_equal(fixture_driver_of(t, GPU), "");
	assert_false(fixture_driver_lists(t, "nvidia", GPU));
	assert_string_equal(fixture_log(t), "unbind nvidia " GPU " ok\n");
}

static void test_override_reads_back_as_the_kernel_shows_it(void **state)
{
	struct fixture_tree *t = *state;
	const char *rel = "bus/pci/devices/" GPU "/driver_override";
	assert_int_equal(sysfs_write(t, rel, "vfio-pci\n"), 0);
	assert_string_equal(fixture_override_of(t, GPU), "vfio-pci\n");
	assert_int_equal(sysfs_write(t, rel, "nv"), 0);
	assert_string_equal(fixture_override_of(t, GPU), "nv\n"); /* replaced, not written over */
	assert_int_equal(sysfs_write(t, rel, ""), 0);
	assert_string_equal(fixture_override_of(t, GPU), "(null)\n");

	/* sysfs ignores O_TRUNC: opening for a write and closing leaves the value alone. */
	assert_int_equal(sysfs_write(t, rel, "vfio-pci"), 0);
	char path[PATH_MAX];
	fixture_tree_path(t, path, "%s", rel);
	int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(close(fd), 0);
	assert_string_equal(fixture_override_of(t, GPU), "vfio-pci\n");
}

static void test_new_id_is_logged_and_accepted(void **state)
{
	struct fixture_tree *t = *state;
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/vfio-pci/new_id", "10de 2330"), 0);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/vfio-pci/remove_id", "10de 2330"), 0);
	assert_string_equal(fixture_log(t), "new_id vfio-pci 10de 2330 ok\n"
				       "remove_id vfio-pci 10de 2330 ok\n");
	assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
}

/* Another tree laid out the same way, but outside VG_MOCK_SYSFS_ROOT, is only a set of files. */
static void test_paths_outside_the_root_pass_through(void **state)
{
	struct fixture_tree *t = *state;
	struct fixture_tree other = { 0 };
	tree_make(&other);
	assert_int_equal(sysfs_write(&other, "bus/pci/drivers/nvidia/unbind", GPU), 0);
	assert_int_equal(sysfs_write(&other, "bus/pci/devices/" GPU "/driver_override", "x"), 0);
	assert_string_equal(fixture_driver_of(&other, GPU), "nvidia");
	char path[PATH_MAX];
	fixture_tree_path(&other, path, "bus/pci/drivers/nvidia/unbind");
	assert_string_equal(fixture_file_content(path), GPU);
	assert_string_equal(fixture_override_of(&other, GPU), "xnull)\n"); /* a plain overwrite */
	/* Non-control files inside the root pass through too. */
	assert_int_equal(sysfs_write(t, "bus/pci/devices/" GPU "/reset", "1"), 0);
	fixture_tree_path(t, path, "bus/pci/devices/" GPU "/reset");
	assert_string_equal(fixture_file_content(path), "1");
	assert_string_equal(fixture_log(t), "");
	fixture_tree_remove(&other);
}

/* ---- failure injection ----------------------------------------------------------------------- */

struct injection_case {
	const char *spec;
	const char *rel;
	const char *value;
	int expected;
	const char *log;
};

static void test_each_injection_fails_and_changes_nothing(void **state)
{
	struct fixture_tree *t = *state;
	static const struct injection_case cases[] = {
		{ "unbind:" GPU ":EBUSY", "bus/pci/drivers/nvidia/unbind", GPU, EBUSY,
		  "unbind nvidia " GPU " EBUSY injected\n" },
		{ "bind:" NIC, "bus/pci/drivers/e1000e/bind", NIC, EIO,
		  "bind e1000e " NIC " EIO injected\n" },
		{ "override:" GPU ":ENODEV", "bus/pci/devices/" GPU "/driver_override", "vfio-pci",
		  ENODEV, "override vfio-pci " GPU " ENODEV injected\n" },
		{ "probe:" NIC ":EBUSY", "bus/pci/drivers_probe", NIC, EBUSY,
		  "probe - " NIC " EBUSY injected\n" },
		{ "new_id:*:EINVAL", "bus/pci/drivers/vfio-pci/new_id", "10de 2330", EINVAL,
		  "new_id vfio-pci 10de 2330 EINVAL injected\n" },
		{ "unbind:*:5", "bus/pci/drivers/snd_hda_intel/unbind", GPU_AUDIO, EIO,
		  "unbind snd_hda_intel " GPU_AUDIO " EIO injected\n" },
	};
	for (size_t i = 0; i < VG_ARRAY_SIZE(cases); i++) {
		char before[2048], after[2048];
		fixture_tree_snapshot(t, before, sizeof(before));
		assert_true(truncate(t->log, 0) == 0 || errno == ENOENT);
		setenv("VG_MOCK_FAIL", cases[i].spec, 1);
		assert_int_equal(sysfs_write(t, cases[i].rel, cases[i].value), cases[i].expected);
		fixture_tree_snapshot(t, after, sizeof(after));
		assert_string_equal(after, before);
		assert_string_equal(fixture_log(t), cases[i].log);
	}
	/* An injection for another device or another step does not fire. */
	setenv("VG_MOCK_FAIL", "unbind:" GPU_AUDIO ":EBUSY,bind:" GPU ":EIO", 1);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/unbind", GPU), 0);
	assert_string_equal(fixture_driver_of(t, GPU), "");
}

static void test_injection_at_the_nth_call_only(void **state)
{
	struct fixture_tree *t = *state;
	setenv("VG_MOCK_FAIL", "unbind:" GPU ":EBUSY@2,bind:" NIC ":ENODEV@1", 1);
	const int expected[] = { 0, EBUSY, 0, 0 };
	for (size_t i = 0; i < VG_ARRAY_SIZE(expected); i++) {
		assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/unbind", GPU), expected[i]);
		if (expected[i] == 0)
			assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/bind", GPU), 0);
		assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
	}
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/e1000e/bind", NIC), ENODEV);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/e1000e/bind", NIC), 0);
	assert_string_equal(fixture_driver_of(t, NIC), "e1000e");
}

/* The count is per tree, so a forked child's call counts as one of the N. */
static void test_nth_call_counts_across_processes(void **state)
{
	struct fixture_tree *t = *state;
	setenv("VG_MOCK_FAIL", "override:" GPU ":EBUSY@2", 1);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		child_write_and_exit(t, "bus/pci/devices/" GPU "/driver_override", "a");
	wait_for_success(pid);
	assert_int_equal(sysfs_write(t, "bus/pci/devices/" GPU "/driver_override", "b"), EBUSY);
	assert_string_equal(fixture_override_of(t, GPU), "a\n");
}

static void test_injected_hang_returns_eio_late(void **state)
{
	struct fixture_tree *t = *state;
	setenv("VG_MOCK_FAIL", "unbind:" GPU ":hang", 1);
	setenv("VG_MOCK_HANG_SECONDS", "1", 1);
	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/unbind", GPU), EIO);
	clock_gettime(CLOCK_MONOTONIC, &end);
	double elapsed =
		(double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
	assert_true(elapsed >= 0.95 && elapsed < 10);
	assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
	assert_string_equal(fixture_log(t), "unbind nvidia " GPU " EIO injected hang\n");
}

static void test_bad_injection_spec_fails_loudly(void **state)
{
	struct fixture_tree *t = *state;
	static const char *const bad[] = { "unbind", "unbind:01:00.0", "frobnicate:" GPU,
					   "unbind:" GPU ":ENOTANERRNO", "unbind:" GPU "@0" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(bad); i++) {
		setenv("VG_MOCK_FAIL", bad[i], 1);
		assert_int_equal(sysfs_write(t, "bus/pci/drivers/nvidia/unbind", GPU), EINVAL);
		assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
	}
}

/* ---- processes ------------------------------------------------------------------------------- */

static void test_forked_children_act_too(void **state)
{
	struct fixture_tree *t = *state;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		child_write_and_exit(t, "bus/pci/drivers/nvidia/unbind", GPU);
	wait_for_success(pid);
	assert_string_equal(fixture_driver_of(t, GPU), "");

	/* An fd opened before the fork is still a control file in the child. */
	char path[PATH_MAX];
	fixture_tree_path(t, path, "bus/pci/drivers/nvidia/bind");
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(write(fd, GPU, strlen(GPU)) == (ssize_t)strlen(GPU) ? 0 : 1);
	wait_for_success(pid);
	assert_int_equal(close(fd), 0);
	assert_string_equal(fixture_driver_of(t, GPU), "nvidia");
	assert_string_equal(fixture_log(t), "unbind nvidia " GPU " ok\nbind nvidia " GPU " ok\n");
}

/* A second write on the same open fd is a second store, as in sysfs. */
static void test_each_write_on_one_fd_acts(void **state)
{
	struct fixture_tree *t = *state;
	char path[PATH_MAX];
	fixture_tree_path(t, path, "bus/pci/drivers/nvidia/unbind");
	cleanup_close int fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, GPU "\n", strlen(GPU) + 1), (ssize_t)strlen(GPU) + 1);
	assert_int_equal(write(fd, GPU, strlen(GPU)), -1);
	assert_int_equal(errno, ENODEV);
	assert_string_equal(fixture_driver_of(t, GPU), "");
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_libvirt_round_trip),
		T(test_group_node_lives_while_a_member_is_bound),
		T(test_bind_of_a_bound_device_is_ebusy),
		T(test_bind_to_vfio_without_iommu_group_is_einval),
		T(test_probe_to_vfio_without_iommu_group_leaves_it_unbound),
		T(test_bind_against_the_override_is_enodev),
		T(test_unbind_from_the_wrong_driver_is_enodev),
		T(test_probe_with_override_of_absent_driver_stays_unbound),
		T(test_unbind_through_the_device_driver_link),
		T(test_override_reads_back_as_the_kernel_shows_it),
		T(test_new_id_is_logged_and_accepted),
		T(test_paths_outside_the_root_pass_through),
		T(test_each_injection_fails_and_changes_nothing),
		T(test_injection_at_the_nth_call_only),
		T(test_nth_call_counts_across_processes),
		T(test_injected_hang_returns_eio_late),
		T(test_bad_injection_spec_fails_loudly),
		T(test_forked_children_act_too),
		T(test_each_write_on_one_fd_acts),
	};
	return cmocka_run_group_tests_name("sysfs_mock", tests, check_preloaded, NULL);
}

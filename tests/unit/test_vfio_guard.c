/*
 * The VFIO guard and the bind journal against the fake kernel (tests/mock): binds, releases,
 * refusals, a failure injected at every step, a hung write, and crashes at every step followed
 * by a journal replay. Every test asserts what is on disk: driver links, driver_override,
 * DEV_ROOT/vfio/N and the journal. Run with the mock in LD_PRELOAD (CTest does).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/bdf.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/gpu_state.h"
#include "lib/sysfs_timed.h"
#include "shim/bind_journal.h"
#include "shim/vfio_guard-priv.h"
#include "shim/vfio_guard.h"
#include "tests/mock/fixture_tree.h"

#define GPU "0000:01:00.0"
#define GPU_AUDIO "0000:01:00.1"
#define GPU_USB "0000:01:00.2" /* a companion with no driver bound */
#define BRIDGE "0000:00:01.0" /* the root port above them, in their group */
#define GPU2 "0000:41:00.0"
#define GPU2_AUDIO "0000:41:00.1"
#define ON_VFIO "0000:03:00.0" /* already on vfio-pci before we start */
#define NIC "0000:02:00.0"
#define GROUP 14
#define GROUP2 30
#define TIMEOUT_MS 2000

struct fixture {
	struct fixture_tree tree;
	char journal[PATH_MAX];
	char before[8192]; /* the snapshot taken before the guard runs */
};

/* ---- the node every test starts from --------------------------------------------------------- */

static void build_node(struct fixture_tree *t)
{
	static const char *const drivers[] = { "nvidia",   "snd_hda_intel", "xhci_hcd",
					       "vfio-pci", "pcieport",	    "igb" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(drivers); i++)
		fixture_tree_add_driver(t, drivers[i]);
	static const struct fixture_device devices[] = {
		{ .bdf = BRIDGE,
		  .driver = "pcieport",
		  .group = GROUP,
		  .class_code = 0x060400,
		  .parent = "devices/pci0000:00" },
		{ .bdf = GPU,
		  .driver = "nvidia",
		  .group = GROUP,
		  .native = "nvidia",
		  .class_code = 0x030200 },
		{ .bdf = GPU_AUDIO,
		  .driver = "snd_hda_intel",
		  .group = GROUP,
		  .native = "snd_hda_intel",
		  .override = "snd_hda_intel",
		  .class_code = 0x040300 },
		{ .bdf = GPU_USB, .group = GROUP, .native = "xhci_hcd", .class_code = 0x0c0330 },
		{ .bdf = GPU2,
		  .driver = "nvidia",
		  .group = GROUP2,
		  .native = "nvidia",
		  .class_code = 0x030200 },
		{ .bdf = GPU2_AUDIO,
		  .driver = "snd_hda_intel",
		  .group = GROUP2,
		  .native = "snd_hda_intel",
		  .class_code = 0x040300 },
	};
	for (size_t i = 0; i < VG_ARRAY_SIZE(devices); i++)
		fixture_tree_add_device(t, &devices[i]);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	fixture_mock_env_clear(); /* build the tree with the mock idle */
	fixture_tree_make(&f->tree);
	build_node(&f->tree);
	int n = snprintf(f->journal, sizeof(f->journal), "%s/bind-journal.json", f->tree.dir);
	assert_true(n > 0 && (size_t)n < sizeof(f->journal));
	fixture_mock_env_use(&f->tree);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	fixture_mock_env_clear();
	fixture_tree_remove(&f->tree);
	free(f);
	return 0;
}

static void take_snapshot(struct fixture *f)
{
	fixture_tree_snapshot(&f->tree, f->before, sizeof(f->before));
}

static void assert_tree_as_before(const struct fixture *f)
{
	char now[sizeof(f->before)];
	fixture_tree_snapshot(&f->tree, now, sizeof(now));
	assert_string_equal(now, f->before);
}

static void assert_never_new_id(const struct fixture *f)
{
	assert_null(strstr(fixture_log(&f->tree), "new_id"));
	assert_null(strstr(fixture_log(&f->tree), "remove_id"));
}

static int bind_list(const struct fixture *f, const char *const *bdfs, size_t n, int timeout_ms,
		     const struct vg_vfio_guard_hooks *hooks, struct vg_vfio_guard **out,
		     struct vg_error **err)
{
	struct vg_bdf addrs[8];
	assert_true(n <= VG_ARRAY_SIZE(addrs));
	for (size_t i = 0; i < n; i++)
		assert_int_equal(vg_bdf_parse(bdfs[i], false, &addrs[i], NULL), 0);
	return vg_vfio_guard_bind_with_hooks(&f->tree.sysfs, f->journal, addrs, n, timeout_ms,
					     f->tree.dev, hooks, out, err);
}

/* err is passed by address: it is read only after the call in ret has filled it. */
static void assert_error(int ret, struct vg_error *const *errp, int code, const char *needle)
{
	const struct vg_error *err = *errp;
	assert_int_equal(ret, -code);
	assert_non_null(err);
	assert_int_equal(err->code, code);
	if (strstr(err->msg, needle) == NULL)
		fail_msg("'%s' is not in the error: %s", needle, err->msg);
}

/* Loads the journal and checks each entry's progress, in bind order. */
static void assert_journal_progress(const struct fixture *f, const char *const *expected, size_t n)
{
	cleanup_bind_journal struct vg_bind_journal *journal = NULL;
	assert_int_equal(vg_bind_journal_load(f->journal, &journal, NULL), 0);
	assert_int_equal(journal->n_entries, n);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(vg_bind_progress_name(journal->entries[i].progress),
				    expected[i]);
}

static const char *const pair[] = { GPU, GPU_AUDIO };
static const char *const both_released[] = { "released", "released" };

/* ---- binding and releasing ------------------------------------------------------------------- */

static void test_bind_and_release_restore_drivers_and_overrides(void **state)
{
	struct fixture *f = *state;
	take_snapshot(f);
	cleanup_vfio_guard struct vg_vfio_guard *guard = NULL;
	cleanup_error struct vg_error *err = NULL;
	assert_int_equal(bind_list(f, pair, 2, TIMEOUT_MS, NULL, &guard, &err), 0);
	assert_null(err);
	assert_string_equal(fixture_driver_of(&f->tree, GPU), "vfio-pci");
	assert_string_equal(fixture_driver_of(&f->tree, GPU_AUDIO), "vfio-pci");
	assert_string_equal(fixture_override_of(&f->tree, GPU), "vfio-pci\n");
	assert_true(fixture_vfio_node_exists(&f->tree, GROUP));
	assert_string_equal(fixture_driver_of(&f->tree, BRIDGE), "pcieport"); /* not ours */

	cleanup_bind_journal struct vg_bind_journal *journal = NULL;
	assert_int_equal(vg_bind_journal_load(f->journal, &journal, NULL), 0);
	assert_int_equal(journal->n_entries, 2);
	const struct vg_bind_journal_entry *gpu = &journal->entries[0],
					   *audio = &journal->entries[1];
	assert_string_equal(gpu->bdf, GPU);
	assert_int_equal(gpu->iommu_group, GROUP);
	assert_string_equal(gpu->original_driver, "nvidia");
	assert_string_equal(gpu->original_override, "");
	assert_false(gpu->was_on_vfio);
	assert_int_equal(gpu->progress, VG_BIND_BOUND_VFIO);
	assert_string_equal(audio->original_driver, "snd_hda_intel");
	assert_string_equal(audio->original_override, "snd_hda_intel");
	assert_int_equal(audio->progress, VG_BIND_BOUND_VFIO);

	assert_int_equal(vg_vfio_guard_release(guard, &err), 0);
	assert_null(err);
	assert_tree_as_before(f);
	assert_false(fixture_vfio_node_exists(&f->tree, GROUP));
	assert_string_equal(fixture_override_of(&f->tree, GPU_AUDIO), "snd_hda_intel\n");
	assert_journal_progress(f, both_released, 2);
	assert_never_new_id(f);
	/* A second release has nothing left to do. */
	size_t log_len = strlen(fixture_log(&f->tree));
	assert_int_equal(vg_vfio_guard_release(guard, &err), 0);
	assert_int_equal(strlen(fixture_log(&f->tree)), log_len);
}

static void test_several_gpus_and_a_driverless_companion(void **state)
{
	struct fixture *f = *state;
	take_snapshot(f);
	static const char *const four[] = { GPU, GPU_AUDIO, GPU_USB, GPU2, GPU2_AUDIO };
	cleanup_vfio_guard struct vg_vfio_guard *guard = NULL;
	cleanup_error struct vg_error *err = NULL;
	assert_int_equal(bind_list(f, four, 5, TIMEOUT_MS, NULL, &guard, &err), 0);
	for (size_t i = 0; i < VG_ARRAY_SIZE(four); i++)
		assert_string_equal(fixture_driver_of(&f->tree, four[i]), "vfio-pci");
	assert_true(fixture_vfio_node_exists(&f->tree, GROUP));
	assert_true(fixture_vfio_node_exists(&f->tree, GROUP2));
	assert_int_equal(vg_vfio_guard_release(guard, &err), 0);
	/* Found without a driver, left without one: no drivers_probe hands it to xhci_hcd. */
	assert_string_equal(fixture_driver_of(&f->tree, GPU_USB), "");
	assert_tree_as_before(f);
	assert_never_new_id(f);
}

/* An override naming another driver than the bound one (set, never probed) comes back too. */
static void test_override_naming_another_driver_comes_back(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(vg_sysfs_write(&f->tree.sysfs, "bus/pci/devices/" GPU "/driver_override",
					"nouveau", NULL),
			 0);
	take_snapshot(f);
	cleanup_vfio_guard struct vg_vfio_guard *guard = NULL;
	assert_int_equal(bind_list(f, pair, 2, TIMEOUT_MS, NULL, &guard, NULL), 0);
	assert_int_equal(vg_vfio_guard_release(guard, NULL), 0);
	assert_string_equal(fixture_override_of(&f->tree, GPU), "nouveau\n");
	assert_string_equal(fixture_driver_of(&f->tree, GPU), "nvidia");
	assert_tree_as_before(f);
}

static void test_function_already_on_vfio_is_left_as_found(void **state)
{
	struct fixture *f = *state;
	static const struct fixture_device on_vfio = { .bdf = ON_VFIO,
						       .driver = "vfio-pci",
						       .group = 15,
						       .native = "nvidia",
						       .override = "vfio-pci",
						       .class_code = 0x030200 };
	fixture_tree_add_device(&f->tree, &on_vfio); /* with its /dev/vfio/15 */
	assert_true(fixture_vfio_node_exists(&f->tree, 15));
	static const char *const one[] = { ON_VFIO };
	cleanup_vfio_guard struct vg_vfio_guard *guard = NULL;
	cleanup_error struct vg_error *err = NULL;
	take_snapshot(f);
	size_t log_len = strlen(fixture_log(&f->tree));
	assert_int_equal(bind_list(f, one, 1, TIMEOUT_MS, NULL, &guard, &err), 0);
	assert_tree_as_before(f);
	assert_int_equal(vg_vfio_guard_release(guard, &err), 0);
	assert_tree_as_before(f);
	assert_string_equal(fixture_driver_of(&f->tree, ON_VFIO), "vfio-pci");
	assert_string_equal(fixture_override_of(&f->tree, ON_VFIO), "vfio-pci\n");
	assert_int_equal(strlen(fixture_log(&f->tree)), log_len); /* not one write */
	cleanup_bind_journal struct vg_bind_journal *journal = NULL;
	assert_int_equal(vg_bind_journal_load(f->journal, &journal, NULL), 0);
	assert_true(journal->entries[0].was_on_vfio);
	assert_int_equal(journal->entries[0].progress, VG_BIND_RELEASED);
}

/* ---- refusals before any write --------------------------------------------------------------- */

/* Decision: a refused bind writes no journal at all, since nothing needs restoring. */
static void assert_refused_untouched(const struct fixture *f)
{
	assert_tree_as_before(f);
	assert_string_equal(fixture_log(&f->tree), "");
	assert_int_equal(access(f->journal, F_OK), -1);
	assert_int_equal(errno, ENOENT);
}

static void test_group_with_a_host_nic_is_refused(void **state)
{
	struct fixture *f = *state;
	static const struct fixture_device nic = {
		.bdf = NIC, .driver = "igb", .group = GROUP, .native = "igb", .class_code = 0x020000
	};
	fixture_tree_add_device(&f->tree, &nic);
	take_snapshot(f);
	cleanup_vfio_guard struct vg_vfio_guard *guard = NULL;
	cleanup_error struct vg_error *err = NULL;
	int ret = bind_list(f, pair, 2, TIMEOUT_MS, NULL, &guard, &err);
	assert_error(ret, &err, EBUSY, NIC);
	assert_non_null(strstr(err->msg, "igb"));
	assert_non_null(strstr(err->msg, "0x020000"));
	assert_non_null(strstr(err->msg, "Nothing was changed"));
	assert_null(guard);
	assert_refused_untouched(f);
}

static void test_function_without_iommu_group_is_refused(void **state)
{
	struct fixture *f = *state;
	static const struct fixture_device no_group = {
		.bdf = NIC, .driver = "igb", .group = -1, .class_code = 0x020000
	};
	fixture_tree_add_device(&f->tree, &no_group);
	take_snapshot(f);
	static const char *const with_nic[] = { GPU, NIC };
	cleanup_error struct vg_error *err = NULL;
	struct vg_vfio_guard *guard = NULL;
	assert_error(bind_list(f, with_nic, 2, TIMEOUT_MS, NULL, &guard, &err), &err, ENODEV,
		     VG_REASON_IOMMU_OFF);
	assert_non_null(strstr(err->msg, NIC));
	assert_refused_untouched(f);
}

static void test_unknown_or_repeated_function_is_refused(void **state)
{
	struct fixture *f = *state;
	take_snapshot(f);
	static const char *const missing[] = { GPU, "0000:09:00.0" };
	static const char *const twice[] = { GPU, GPU };
	struct vg_vfio_guard *guard = NULL;
	struct vg_error *err = NULL;
	assert_error(bind_list(f, missing, 2, TIMEOUT_MS, NULL, &guard, &err), &err, ENODEV,
		     "no PCI function 0000:09:00.0");
	vg_error_free(err);
	err = NULL;
	assert_error(bind_list(f, twice, 2, TIMEOUT_MS, NULL, &guard, &err), &err, EINVAL,
		     "listed twice");
	vg_error_free(err);
	assert_refused_untouched(f);
}

/* A stale journal may be the only record of a binding not yet restored: never overwritten. */
static void test_existing_journal_is_not_overwritten(void **state)
{
	struct fixture *f = *state;
	fixture_put_file(f->journal, "stale");
	cleanup_error struct vg_error *err = NULL;
	struct vg_vfio_guard *guard = NULL;
	assert_error(bind_list(f, pair, 2, TIMEOUT_MS, NULL, &guard, &err), &err, EEXIST,
		     "replay it");
	assert_string_equal(fixture_file_content(f->journal), "stale");
	assert_string_equal(fixture_log(&f->tree), "");
}

/* ---- failures during the bind ---------------------------------------------------------------- */

struct fault_case {
	const char *inject; /* VG_MOCK_FAIL */
	int code;
};

static void test_failure_at_each_step_is_unwound(void **state)
{
	struct fixture *f = *state;
	static const char *const four[] = { GPU, GPU_AUDIO, GPU2, GPU2_AUDIO };
	static const struct fault_case cases[] = {
		{ "override:" GPU ":EBUSY", EBUSY },
		{ "unbind:" GPU ":EIO", EIO },
		{ "probe:" GPU ":ENODEV", ENODEV },
		{ "override:" GPU_AUDIO ":EACCES", EACCES },
		{ "unbind:" GPU_AUDIO ":EBUSY", EBUSY },
		{ "probe:" GPU_AUDIO ":EIO", EIO },
		{ "probe:" GPU2 ":ENOMEM", ENOMEM },
		{ "probe:" GPU2_AUDIO ":EBUSY", EBUSY },
		/* The unwind's own bind back to nvidia fails: drivers_probe brings it back. */
		{ "probe:" GPU_AUDIO ":EIO,bind:" GPU ":EBUSY", EIO },
		/* The unwind's unbind from vfio-pci fails once; the bind error is still first. */
		{ "probe:" GPU2 ":EIO,unbind:" GPU_AUDIO ":ENODEV@2", EIO },
	};
	for (size_t i = 0; i < VG_ARRAY_SIZE(cases); i++) {
		teardown(state);
		setup(state);
		f = *state;
		take_snapshot(f);
		setenv("VG_MOCK_FAIL", cases[i].inject, 1);
		cleanup_error struct vg_error *err = NULL;
		struct vg_vfio_guard *guard = NULL;
		int ret = bind_list(f, four, 4, TIMEOUT_MS, NULL, &guard, &err);
		assert_error(ret, &err, cases[i].code, strerror(cases[i].code));
		assert_null(guard);
		unsetenv("VG_MOCK_FAIL");
		if (strstr(cases[i].inject, "@2") != NULL) {
			/* That function stayed on vfio-pci: the journal still says so; replay. */
			assert_string_equal(fixture_driver_of(&f->tree, GPU_AUDIO), "vfio-pci");
			assert_int_equal(vg_bind_journal_replay(&f->tree.sysfs, f->journal,
								TIMEOUT_MS, NULL),
					 0);
		}
		assert_tree_as_before(f);
		assert_false(fixture_vfio_node_exists(&f->tree, GROUP));
		assert_false(fixture_vfio_node_exists(&f->tree, GROUP2));
		static const char *const all_released[] = { "released", "released", "released",
							    "released" };
		assert_journal_progress(f, all_released, 4);
		assert_never_new_id(f);
	}
}

/* The kernel's drivers_probe succeeds even when vfio-pci's probe fails: only the link tells. */
static void test_probe_that_binds_nothing_is_caught(void **state)
{
	struct fixture *f = *state;
	/* vfio-pci is not loaded: the override names a driver that is not there. */
	fixture_tree_remove_driver(&f->tree, "vfio-pci");
	take_snapshot(f);
	cleanup_error struct vg_error *err = NULL;
	struct vg_vfio_guard *guard = NULL;
	assert_error(bind_list(f, pair, 2, TIMEOUT_MS, NULL, &guard, &err), &err, EIO,
		     GPU ": not on vfio-pci after drivers_probe: bound to nothing");
	assert_tree_as_before(f);
	assert_journal_progress(f, both_released, 2);
}

/* Bound, but no /dev/vfio/N: nothing could open the group, so the bind is undone. */
static void test_missing_group_node_is_unwound(void **state)
{
	struct fixture *f = *state;
	take_snapshot(f);
	unsetenv("VG_MOCK_DEV_ROOT"); /* the mock makes no nodes */
	cleanup_error struct vg_error *err = NULL;
	struct vg_vfio_guard *guard = NULL;
	int ret = bind_list(f, pair, 2, TIMEOUT_MS, NULL, &guard, &err);
	assert_error(ret, &err, ENOENT, "vfio/14 did not appear after binding " GPU);
	assert_tree_as_before(f);
	assert_journal_progress(f, both_released, 2);
}

static double seconds_since(const struct timespec *start)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

static void test_hung_write_times_out_and_is_unwound(void **state)
{
	struct fixture *f = *state;
	take_snapshot(f);
	setenv("VG_MOCK_FAIL", "unbind:" GPU_AUDIO ":hang", 1);
	setenv("VG_MOCK_HANG_SECONDS", "600", 1);
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	cleanup_error struct vg_error *err = NULL;
	struct vg_vfio_guard *guard = NULL;
	int ret = bind_list(f, pair, 2, 300, NULL, &guard, &err);
	assert_true(seconds_since(&start) < 5);
	assert_error(ret, &err, ETIMEDOUT, "did not finish within 300 ms");
	assert_non_null(strstr(err->msg, "bus/pci/drivers/snd_hda_intel/unbind"));
	unsetenv("VG_MOCK_FAIL");
	assert_tree_as_before(f);
	assert_journal_progress(f, both_released, 2);
}

/* The timed write reports the child's errno as precisely as a direct write would. */
static void test_timed_write_reports_errno(void **state)
{
	struct fixture *f = *state;
	setenv("VG_MOCK_FAIL", "override:" GPU ":EBUSY", 1);
	cleanup_error struct vg_error *err = NULL;
	const char *rel = "bus/pci/devices/" GPU "/driver_override";
	assert_int_equal(vg_sysfs_write_timed(&f->tree.sysfs, rel, "vfio-pci", 500, &err), -EBUSY);
	char expected[PATH_MAX + 128];
	int n = snprintf(expected, sizeof(expected),
			 "write 'vfio-pci' to %s/%s: Device or resource busy", f->tree.root, rel);
	assert_true(n > 0 && (size_t)n < sizeof(expected));
	assert_string_equal(err->msg, expected);
	unsetenv("VG_MOCK_FAIL");
	assert_int_equal(vg_sysfs_write_timed(&f->tree.sysfs, rel, "vfio-pci", 500, NULL), 0);
	assert_string_equal(fixture_override_of(&f->tree, GPU), "vfio-pci\n");
	assert_int_equal(vg_sysfs_write_timed(&f->tree.sysfs, "no/such/file", "x", 500, NULL),
			 -ENOENT);
}

/* ---- release that fails ---------------------------------------------------------------------- */

static void test_release_names_what_did_not_come_back(void **state)
{
	struct fixture *f = *state;
	take_snapshot(f);
	cleanup_vfio_guard struct vg_vfio_guard *guard = NULL;
	assert_int_equal(bind_list(f, pair, 2, TIMEOUT_MS, NULL, &guard, NULL), 0);
	setenv("VG_MOCK_FAIL", "bind:" GPU ":EIO,probe:" GPU ":EIO", 1);
	cleanup_error struct vg_error *err = NULL;
	assert_error(vg_vfio_guard_release(guard, &err), &err, EIO,
		     "1 of 2 functions did not come back (" GPU ")");
	assert_non_null(strstr(err->msg, "bound to nothing (was nvidia)"));
	assert_string_equal(fixture_driver_of(&f->tree, GPU_AUDIO), "snd_hda_intel");
	static const char *const gpu_pending[] = { "bound-vfio", "released" };
	assert_journal_progress(f, gpu_pending, 2);
	unsetenv("VG_MOCK_FAIL");
	assert_int_equal(vg_vfio_guard_release(guard, NULL), 0);
	assert_tree_as_before(f);
	assert_journal_progress(f, both_released, 2);
}

/* ---- crashes, then replay -------------------------------------------------------------------- */

enum { CHILD_BOUND = 0, CHILD_CRASHED = 77, CHILD_BIND_FAILED = 78 };

struct crash_point {
	const char *hang; /* VG_MOCK_FAIL: the child is killed while this write hangs */
	int hook_index; /* or the child _exits right after this write, before journaling */
	enum vg_bind_progress hook_step;
	bool hang_in_release; /* bind fully, then hang while releasing GPU (after its audio) */
	const char *journal_at_crash[2];
};

static void crash_after_write(void *ctx, size_t index, enum vg_bind_progress step)
{
	const struct crash_point *c = ctx;
	if (c->hook_index >= 0 && (size_t)c->hook_index == index && c->hook_step == step)
		_exit(CHILD_CRASHED);
}

/* In the forked child: no cmocka asserts, always _exit. */
__attribute__((noreturn)) static void run_shim_child(const struct fixture *f,
						     const struct crash_point *c)
{
	setpgid(0, 0); /* one group with its writer children, so the test can kill them all */
	if (c->hang != NULL)
		setenv("VG_MOCK_FAIL", c->hang, 1);
	struct vg_vfio_guard_hooks hooks = { .after_write = crash_after_write, .ctx = (void *)c };
	struct vg_vfio_guard *guard = NULL;
	if (bind_list(f, pair, 2, 600000, &hooks, &guard, NULL) < 0)
		_exit(CHILD_BIND_FAILED);
	if (c->hang_in_release) {
		setenv("VG_MOCK_FAIL", "unbind:" GPU ":hang", 1);
		vg_vfio_guard_release(guard, NULL);
	}
	_exit(CHILD_BOUND);
}

/* Waits (bounded) until the mock logged the injected hang: the child is then stuck in it. */
static void wait_for_hang(const struct fixture *f)
{
	for (int i = 0; i < 1000; i++) {
		if (strstr(fixture_log(&f->tree), "injected hang") != NULL)
			return;
		struct timespec tick = { .tv_nsec = 10 * 1000 * 1000 };
		nanosleep(&tick, NULL);
	}
	fail_msg("the child never reached the injected hang");
}

/* Runs the child to its crash; kills and reaps it and its writers by process group id. */
static void crash_shim(const struct fixture *f, const struct crash_point *c)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		run_shim_child(f, c);
	bool hangs = c->hang != NULL || c->hang_in_release;
	if (hangs) {
		wait_for_hang(f);
		assert_int_equal(kill(-pid, SIGKILL), 0);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (hangs)
		assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	else
		assert_true(WIFEXITED(status) &&
			    WEXITSTATUS(status) ==
				    (c->hook_index >= 0 ? CHILD_CRASHED : CHILD_BOUND));
	/* The killed writer is ours too (we are a subreaper): reap what is left of the group. */
	while (waitpid(-pid, &status, 0) > 0)
		;
}

static void test_crash_at_every_step_then_replay_restores(void **state)
{
	/* hang, hook_index, hook_step, hang_in_release, the journal as the crash leaves it */
	static const struct crash_point points[] = {
		{ "override:" GPU ":hang", -1, 0, false, { "journaled", "journaled" } },
		{ "unbind:" GPU ":hang", -1, 0, false, { "override-set", "journaled" } },
		{ "probe:" GPU ":hang", -1, 0, false, { "unbound", "journaled" } },
		{ "override:" GPU_AUDIO ":hang", -1, 0, false, { "bound-vfio", "journaled" } },
		{ "unbind:" GPU_AUDIO ":hang", -1, 0, false, { "bound-vfio", "override-set" } },
		{ "probe:" GPU_AUDIO ":hang", -1, 0, false, { "bound-vfio", "unbound" } },
		/* Written but not yet journaled: the journal lags one step behind the tree. */
		{ NULL, 0, VG_BIND_OVERRIDE_SET, false, { "journaled", "journaled" } },
		{ NULL, 0, VG_BIND_UNBOUND, false, { "override-set", "journaled" } },
		{ NULL, 0, VG_BIND_BOUND_VFIO, false, { "unbound", "journaled" } },
		{ NULL, 1, VG_BIND_OVERRIDE_SET, false, { "bound-vfio", "journaled" } },
		{ NULL, 1, VG_BIND_UNBOUND, false, { "bound-vfio", "override-set" } },
		{ NULL, 1, VG_BIND_BOUND_VFIO, false, { "bound-vfio", "unbound" } },
		/* Fully bound: the shim dies with the sandbox running. */
		{ NULL, -1, 0, false, { "bound-vfio", "bound-vfio" } },
		/* Killed halfway through its own release, after the audio function came back. */
		{ NULL, -1, 0, true, { "bound-vfio", "released" } },
	};
	for (size_t i = 0; i < VG_ARRAY_SIZE(points); i++) {
		teardown(state);
		setup(state);
		struct fixture *f = *state;
		setenv("VG_MOCK_HANG_SECONDS", "600", 1);
		take_snapshot(f);
		crash_shim(f, &points[i]);
		assert_journal_progress(f, points[i].journal_at_crash, 2);

		/* What the agent does when it sees the shim's pidfd close. */
		cleanup_error struct vg_error *err = NULL;
		assert_int_equal(
			vg_bind_journal_replay(&f->tree.sysfs, f->journal, TIMEOUT_MS, &err), 0);
		assert_tree_as_before(f);
		assert_false(fixture_vfio_node_exists(&f->tree, GROUP));
		assert_journal_progress(f, both_released, 2);
		assert_never_new_id(f);

		/* Again: a no-op, not one write, and the journal unchanged. */
		char log_before[4096], journal_before[4096];
		int n = snprintf(log_before, sizeof(log_before), "%s", fixture_log(&f->tree));
		assert_true(n >= 0 && (size_t)n < sizeof(log_before));
		n = snprintf(journal_before, sizeof(journal_before), "%s",
			     fixture_file_content(f->journal));
		assert_true(n >= 0 && (size_t)n < sizeof(journal_before));
		assert_int_equal(
			vg_bind_journal_replay(&f->tree.sysfs, f->journal, TIMEOUT_MS, NULL), 0);
		assert_string_equal(fixture_log(&f->tree), log_before);
		assert_string_equal(fixture_file_content(f->journal), journal_before);
	}
}

/* A replay that fails partway leaves the rest for the next one. */
static void test_partial_replay_then_replay_again(void **state)
{
	struct fixture *f = *state;
	take_snapshot(f);
	static const struct crash_point bound = { .hook_index = -1 };
	crash_shim(f, &bound);
	setenv("VG_MOCK_FAIL", "override:" GPU ":EIO", 1);
	cleanup_error struct vg_error *err = NULL;
	assert_error(vg_bind_journal_replay(&f->tree.sysfs, f->journal, TIMEOUT_MS, &err), &err,
		     EIO, "restore " GPU);
	static const char *const gpu_pending[] = { "bound-vfio", "released" };
	assert_journal_progress(f, gpu_pending, 2);
	assert_string_equal(fixture_driver_of(&f->tree, GPU_AUDIO), "snd_hda_intel");
	unsetenv("VG_MOCK_FAIL");
	assert_int_equal(vg_bind_journal_replay(&f->tree.sysfs, f->journal, TIMEOUT_MS, NULL), 0);
	assert_tree_as_before(f);
	assert_journal_progress(f, both_released, 2);
}

/* ---- the journal file ------------------------------------------------------------------------ */

/* One journaled function; the arguments are JSON text. */
#define JOURNAL(bdf, was_on_vfio, progress, extra)                                                 \
	"{\"version\": 1, \"functions\": [{\"bdf\": \"" bdf "\", \"iommu_group\": 1, "             \
	"\"original_driver\": \"\", \"original_override\": \"\", \"was_on_vfio\": " was_on_vfio    \
	", \"progress\": \"" progress "\"" extra "}]}"

static void test_journal_is_read_strictly(void **state)
{
	struct fixture *f = *state;
	static const char *const bad[] = {
		"not json",
		"{\"version\": 2, \"functions\": []}",
		"{\"version\": 1, \"functions\": []}",
		JOURNAL("01:00.0", "false", "journaled", ""),
		JOURNAL(GPU, "false", "half-done", ""),
		JOURNAL(GPU, "false", "journaled", ", \"extra\": 1"),
		JOURNAL(GPU, "\"no\"", "journaled", ""),
	};
	/* The same text with good values loads: the refusals above are for the values. */
	fixture_put_file(f->journal, JOURNAL(GPU, "true", "released", ""));
	cleanup_bind_journal struct vg_bind_journal *good = NULL;
	assert_int_equal(vg_bind_journal_load(f->journal, &good, NULL), 0);
	assert_true(good->entries[0].was_on_vfio);
	for (size_t i = 0; i < VG_ARRAY_SIZE(bad); i++) {
		fixture_put_file(f->journal, bad[i]);
		struct vg_bind_journal *journal = NULL;
		cleanup_error struct vg_error *err = NULL;
		assert_int_equal(vg_bind_journal_load(f->journal, &journal, &err), -EINVAL);
		assert_null(journal);
		assert_non_null(strstr(err->msg, f->journal));
	}
	/* Replay of a journal that cannot be read writes nothing. */
	assert_int_equal(vg_bind_journal_replay(&f->tree.sysfs, f->journal, TIMEOUT_MS, NULL),
			 -EINVAL);
	assert_string_equal(fixture_log(&f->tree), "");
}

static int check_preloaded(void **state)
{
	(void)state;
	const char *preload = getenv("LD_PRELOAD");
	if (preload == NULL || strstr(preload, "vgsysfsmock") == NULL) {
		fprintf(stderr, "test_vfio_guard needs LD_PRELOAD=libvgsysfsmock.so "
				"(CTest sets it)\n");
		return -1;
	}
	/* Writers orphaned by a killed child come back to us, so the crash tests reap them. */
	return prctl(PR_SET_CHILD_SUBREAPER, 1) == 0 ? 0 : -1;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_bind_and_release_restore_drivers_and_overrides),
		T(test_several_gpus_and_a_driverless_companion),
		T(test_override_naming_another_driver_comes_back),
		T(test_function_already_on_vfio_is_left_as_found),
		T(test_group_with_a_host_nic_is_refused),
		T(test_function_without_iommu_group_is_refused),
		T(test_unknown_or_repeated_function_is_refused),
		T(test_existing_journal_is_not_overwritten),
		T(test_failure_at_each_step_is_unwound),
		T(test_probe_that_binds_nothing_is_caught),
		T(test_missing_group_node_is_unwound),
		T(test_hung_write_times_out_and_is_unwound),
		T(test_timed_write_reports_errno),
		T(test_release_names_what_did_not_come_back),
		T(test_crash_at_every_step_then_replay_restores),
		T(test_partial_replay_then_replay_again),
		T(test_journal_is_read_strictly),
	};
	return cmocka_run_group_tests_name("vfio_guard", tests, check_preloaded, NULL);
}

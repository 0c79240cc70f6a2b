/* The allocator on an HGX-like table, GetPreferredAllocation, and a brute-force cross-check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/allocator.h"
#include "agent/gpu_request.h"
#include "lib/cleanup.h"
#include "lib/error.h"

#define H100 "GH100[H100 SXM5 80GB]"

/* 8 GPUs: 0-3 on NUMA 0 (roots pci0000:10 and pci0000:50, two each), 4-7 on NUMA 1
 * (pci0000:90 and pci0000:d0, two each). */
static const struct vg_alloc_device hgx_template[8] = {
	{ "0000:18:00.0", 0, 0, "pci0000:10", H100, 0x10de, 0x2330, true, NULL },
	{ "0000:1a:00.0", 1, 0, "pci0000:10", H100, 0x10de, 0x2330, true, NULL },
	{ "0000:5d:00.0", 2, 0, "pci0000:50", H100, 0x10de, 0x2330, true, NULL },
	{ "0000:5f:00.0", 3, 0, "pci0000:50", H100, 0x10de, 0x2330, true, NULL },
	{ "0000:9a:00.0", 4, 1, "pci0000:90", H100, 0x10de, 0x2330, true, NULL },
	{ "0000:9c:00.0", 5, 1, "pci0000:90", H100, 0x10de, 0x2330, true, NULL },
	{ "0000:db:00.0", 6, 1, "pci0000:d0", H100, 0x10de, 0x2330, true, NULL },
	{ "0000:dd:00.0", 7, 1, "pci0000:d0", H100, 0x10de, 0x2330, true, NULL },
};

struct table {
	struct vg_alloc_device dev[8];
};

static struct table hgx(void)
{
	struct table t;
	memcpy(t.dev, hgx_template, sizeof(t.dev));
	return t;
}

static void take(struct table *t, size_t i, const char *why)
{
	t->dev[i].free = false;
	t->dev[i].why_not_free = why;
}

static struct vg_gpu_request *count_request(unsigned count)
{
	struct vg_gpu_request *req = calloc(1, sizeof(*req));
	assert_non_null(req);
	req->kind = count ? VG_REQ_COUNT : VG_REQ_NONE;
	req->count = count;
	return req;
}

static struct vg_gpu_request *annotated(const char *key, const char *value, const char *count)
{
	struct vg_gpu_request *req = calloc(1, sizeof(*req));
	cleanup_free struct vg_vm_shape *vm = calloc(1, sizeof(*vm));
	assert_non_null(req);
	assert_non_null(vm);
	struct vg_kv kv[] = { { key, value }, { "vmgpu.io/gpu-count", count } };
	struct vg_error *err = NULL;
	if (vg_sandbox_request_parse(kv, count ? 2 : 1, req, vm, &err) != 0)
		fail_msg("request %s=%s rejected: %s", key, value, err->msg);
	return req;
}

/* Checks that the allocation succeeds with exactly the positions in `want` (a -1-terminated
 * list). */
static void expect_chosen(const struct vg_alloc_device *dev, size_t n,
			  const struct vg_gpu_request *req, const int *want)
{
	size_t chosen[VG_REQ_MAX_GPUS], n_chosen = 99;
	struct vg_error *err = NULL;
	int r = vg_allocate(dev, n, req, chosen, &n_chosen, &err);
	if (r != 0)
		fail_msg("allocation failed: %s", err ? err->msg : "?");
	char got[128] = "", exp[128] = "";
	size_t len = 0;
	for (size_t i = 0; i < n_chosen; i++)
		len += (size_t)snprintf(got + len, sizeof(got) - len, "%zu ", chosen[i]);
	len = 0;
	for (size_t i = 0; want[i] >= 0; i++)
		len += (size_t)snprintf(exp + len, sizeof(exp) - len, "%d ", want[i]);
	assert_string_equal(got, exp);
}

/* Checks the errno and every substring, and that nothing was written. */
static void expect_failure(const struct vg_alloc_device *dev, size_t n,
			   const struct vg_gpu_request *req, int code, ...)
{
	size_t chosen[VG_REQ_MAX_GPUS], n_chosen = 77;
	for (size_t i = 0; i < VG_REQ_MAX_GPUS; i++)
		chosen[i] = 1000 + i;
	struct vg_error *err = NULL;
	int r = vg_allocate(dev, n, req, chosen, &n_chosen, &err);
	if (r == 0)
		fail_msg("allocation succeeded, expected errno %d", code);
	assert_int_equal(r, -code);
	assert_int_equal(vg_error_code(err), code);
	va_list ap;
	va_start(ap, code);
	for (const char *want = va_arg(ap, const char *); want != NULL;
	     want = va_arg(ap, const char *))
		if (strstr(err->msg, want) == NULL)
			fail_msg("error '%s' does not contain '%s'", err->msg, want);
	va_end(ap);
	assert_int_equal(n_chosen, 77);
	for (size_t i = 0; i < VG_REQ_MAX_GPUS; i++)
		assert_int_equal(chosen[i], 1000 + i);
	vg_error_free(err);
}

#define WANT(...) ((const int[]){ __VA_ARGS__, -1 })
#define NONE_CHOSEN ((const int[]){ -1 })

/* ---- counts ---- */

static void count_picks_one_root_then_one_node(void **state)
{
	(void)state;
	struct table t = hgx();
	cleanup_free struct vg_gpu_request *one = count_request(1);
	cleanup_free struct vg_gpu_request *two = count_request(2);
	cleanup_free struct vg_gpu_request *three = count_request(3);
	cleanup_free struct vg_gpu_request *four = count_request(4);
	cleanup_free struct vg_gpu_request *eight = count_request(8);
	expect_chosen(t.dev, 8, one, WANT(0));
	expect_chosen(t.dev, 8, two, WANT(0, 1));
	expect_chosen(t.dev, 8, three, WANT(0, 1, 2));
	expect_chosen(t.dev, 8, four, WANT(0, 1, 2, 3));
	expect_chosen(t.dev, 8, eight, WANT(0, 1, 2, 3, 4, 5, 6, 7));
}

static void count_prefers_a_whole_root_over_low_indexes(void **state)
{
	(void)state;
	struct table t = hgx();
	take(&t, 0, "allocated to sandbox web-1");
	cleanup_free struct vg_gpu_request *two = count_request(2);
	cleanup_free struct vg_gpu_request *three = count_request(3);
	/* GPU 1 is alone on pci0000:10 now; pci0000:50 still has two. */
	expect_chosen(t.dev, 8, two, WANT(2, 3));
	/* NUMA 0 still has three free. */
	expect_chosen(t.dev, 8, three, WANT(1, 2, 3));
}

static void count_four_with_gpu0_taken_picks_numa1(void **state)
{
	(void)state;
	struct table t = hgx();
	take(&t, 0, "allocated to sandbox web-1");
	cleanup_free struct vg_gpu_request *four = count_request(4);
	expect_chosen(t.dev, 8, four, WANT(4, 5, 6, 7));
}

static void count_spanning_nodes_is_deterministic(void **state)
{
	(void)state;
	/* Two free per node, each pair on one root: three GPUs span two nodes and two roots. */
	struct table t = hgx();
	take(&t, 2, "allocated to sandbox a");
	take(&t, 3, "allocated to sandbox a");
	take(&t, 4, "allocated to sandbox b");
	take(&t, 5, "allocated to sandbox b");
	cleanup_free struct vg_gpu_request *three = count_request(3);
	for (int i = 0; i < 3; i++)
		expect_chosen(t.dev, 8, three, WANT(0, 1, 6));

	/* NUMA 0's two free GPUs sit on two roots, NUMA 1's on one: {0, 6, 7} touches two roots,
	 * {0, 2, 6} three. Fewer roots beat lower indexes. */
	struct table u = hgx();
	take(&u, 1, "allocated to sandbox a");
	take(&u, 3, "allocated to sandbox a");
	take(&u, 4, "allocated to sandbox b");
	take(&u, 5, "allocated to sandbox b");
	expect_chosen(u.dev, 8, three, WANT(0, 6, 7));
}

static void count_too_large_is_resource_exhausted(void **state)
{
	(void)state;
	struct table t = hgx();
	cleanup_free struct vg_gpu_request *nine = count_request(9);
	expect_failure(t.dev, 8, nine, ENOSPC, "requested 9 GPUs but only 8 are available (8 total)",
		       NULL);
	take(&t, 0, "allocated to sandbox web-1");
	take(&t, 6, "unsupported: IOMMU is off; enable intel_iommu=on");
	cleanup_free struct vg_gpu_request *seven = count_request(7);
	expect_failure(t.dev, 8, seven, ENOSPC,
		       "requested 7 GPUs but only 6 are available (8 total; reasons for the others: "
		       "0000:18:00.0: allocated to sandbox web-1; 0000:db:00.0: unsupported: IOMMU "
		       "is off; enable intel_iommu=on)",
		       NULL);
	for (size_t i = 1; i < 8; i++)
		if (i != 6)
			take(&t, i, NULL);
	cleanup_free struct vg_gpu_request *one = count_request(1);
	expect_failure(t.dev, 8, one, ENOSPC, "requested 1 GPU but only 0 are available (8 total; "
					      "reasons for the others: 0000:18:00.0: allocated to "
					      "sandbox web-1; 0000:1a:00.0: not available;",
		       NULL);
	expect_failure(t.dev, 0, one, ENOSPC, "requested 1 GPU but this node has no GPUs", NULL);
}

static void count_reasons_are_truncated(void **state)
{
	(void)state;
	struct vg_alloc_device dev[12];
	char bdf[12][VG_BDF_STRLEN];
	char long_reason[400];
	memset(long_reason, 'r', sizeof(long_reason) - 1);
	long_reason[sizeof(long_reason) - 1] = '\0';
	for (size_t i = 0; i < 12; i++) {
		snprintf(bdf[i], sizeof(bdf[i]), "0000:%02x:00.0", (unsigned)(i + 1) & 0xff);
		dev[i] = (struct vg_alloc_device){ bdf[i], (int)i, 0, "pci0000:00", "GPU",
						   0x10de, 0x2330, false, long_reason };
	}
	cleanup_free struct vg_gpu_request *one = count_request(1);
	struct vg_error *err = NULL;
	size_t chosen[VG_REQ_MAX_GPUS], n_chosen;
	assert_int_equal(vg_allocate(dev, 12, one, chosen, &n_chosen, &err), -ENOSPC);
	assert_non_null(strstr(err->msg, "; and 4 more)"));
	assert_non_null(strstr(err->msg, "0000:08:00.0: "));
	assert_null(strstr(err->msg, "0000:09:00.0"));
	/* Each reason is cut at 160 characters. */
	char cut[162];
	memset(cut, 'r', 161);
	cut[161] = '\0';
	assert_null(strstr(err->msg, cut));
	cut[160] = '\0';
	assert_non_null(strstr(err->msg, cut));
	vg_error_free(err);
}

static void none_and_zero_choose_nothing(void **state)
{
	(void)state;
	struct table t = hgx();
	cleanup_free struct vg_gpu_request *none = count_request(0);
	expect_chosen(t.dev, 8, none, NONE_CHOSEN);
	expect_chosen(NULL, 0, none, NONE_CHOSEN);
	cleanup_free struct vg_gpu_request *big = count_request(17);
	expect_failure(t.dev, 8, big, EINVAL, "requested 17 GPUs; at most 16 fit one sandbox", NULL);
}

/* ---- named devices ---- */

static void devices_by_index_and_bdf(void **state)
{
	(void)state;
	struct table t = hgx();
	cleanup_free struct vg_gpu_request *mixed =
		annotated("vmgpu.io/gpu-devices", "7, 0000:18:00.0,3", NULL);
	expect_chosen(t.dev, 8, mixed, WANT(0, 3, 7));
	cleanup_free struct vg_gpu_request *upper =
		annotated("vmgpu.io/gpu-devices", "0000:DB:00.0", "1");
	expect_chosen(t.dev, 8, upper, WANT(6));
	/* Named GPUs are taken as named, topology aside. */
	cleanup_free struct vg_gpu_request *spread = annotated("vmgpu.io/gpu-devices", "0,7", NULL);
	expect_chosen(t.dev, 8, spread, WANT(0, 7));
}

static void devices_same_gpu_twice(void **state)
{
	(void)state;
	struct table t = hgx();
	cleanup_free struct vg_gpu_request *dup =
		annotated("vmgpu.io/gpu-devices", "2, 0, 0000:18:00.0", NULL);
	expect_failure(t.dev, 8, dup, EINVAL,
		       "vmgpu.io/gpu-devices: items 0 and 0000:18:00.0 both name GPU 0000:18:00.0 "
		       "(index 0)",
		       NULL);
}

static void devices_unknown(void **state)
{
	(void)state;
	struct table t = hgx();
	cleanup_free struct vg_gpu_request *index = annotated("vmgpu.io/gpu-devices", "1,9", NULL);
	expect_failure(t.dev, 8, index, ENOENT, "no GPU 9 on this node (known: 0-7)", NULL);
	cleanup_free struct vg_gpu_request *bdf =
		annotated("vmgpu.io/gpu-devices", "0000:99:00.0", NULL);
	expect_failure(t.dev, 8, bdf, ENOENT,
		       "no GPU 0000:99:00.0 on this node (known: 0000:18:00.0, 0000:1a:00.0, "
		       "0000:5d:00.0, 0000:5f:00.0, 0000:9a:00.0, 0000:9c:00.0, 0000:db:00.0, "
		       "0000:dd:00.0)",
		       NULL);
	/* Index ranges with gaps (a GPU filtered out of the inventory). */
	t.dev[3].index = 4;
	t.dev[4].index = 5;
	t.dev[5].index = 6;
	t.dev[6].index = 8;
	t.dev[7].index = 10;
	expect_failure(t.dev, 8, index, ENOENT, "no GPU 9 on this node (known: 0-2, 4-6, 8, 10)",
		       NULL);
	expect_failure(t.dev, 0, index, ENOENT, "no GPU 1 on this node (it has no GPUs)", NULL);
	/* An unknown item wins over a busy one: the request is wrong whatever the state. */
	take(&t, 1, "allocated to sandbox web-1");
	expect_failure(t.dev, 8, index, ENOENT, "no GPU 9 on this node", NULL);
}

static void devices_busy_with_reason(void **state)
{
	(void)state;
	struct table t = hgx();
	take(&t, 5, "allocated to sandbox web-1");
	cleanup_free struct vg_gpu_request *req = annotated("vmgpu.io/gpu-devices", "4,5", NULL);
	expect_failure(t.dev, 8, req, EBUSY,
		       "GPU 0000:9c:00.0 (index 5) is not available: allocated to sandbox web-1",
		       NULL);
	take(&t, 4, "unsupported: the firmware requires a direct IOMMU mapping");
	expect_failure(t.dev, 8, req, EBUSY,
		       "GPU 0000:9a:00.0 (index 4) is not available: unsupported: the firmware "
		       "requires a direct IOMMU mapping",
		       NULL);
	take(&t, 4, NULL);
	expect_failure(t.dev, 8, req, EBUSY, "GPU 0000:9a:00.0 (index 4) is not available: in use",
		       NULL);
}

/* ---- selectors ---- */

static void selector_matching(void **state)
{
	(void)state;
	struct vg_alloc_device dev = { "0000:18:00.0", 0, -1, "pci0000:10", H100,
				       0x10de, 0x2330, true, NULL };
	struct {
		const char *selector;
		bool match;
	} cases[] = {
		{ "product=H100", true },
		{ "product=h100 sxm5", true },
		{ "product=[H100", true },
		{ "product=A100", false },
		{ "product!=A100", true },
		{ "product!=h100", false },
		{ "vendor=10de", true },
		{ "vendor=0x10DE", true },
		{ "vendor!=10de", false },
		{ "device in (20b5, 2330)", true },
		{ "device in (20b5, 2331)", false },
		{ "numa=-1", true },
		{ "numa=0", false },
		{ "numa in (0, -1)", true },
		{ "numa!=0", true },
		{ "pcie-root=pci0000:10", true },
		{ "pcie-root=PCI0000:10", true },
		{ "pcie-root=pci0000:1a", false },
		{ "pcie-root in (pci0000:90, pci0000:10)", true },
		{ "product=H100,numa=-1,vendor=10de", true },
		{ "product=H100,numa=0", false },
	};
	for (size_t i = 0; i < VG_ARRAY_SIZE(cases); i++) {
		cleanup_free struct vg_selector *sel = calloc(1, sizeof(*sel));
		assert_non_null(sel);
		assert_int_equal(vg_selector_parse(cases[i].selector, sel, NULL), 0);
		if (vg_selector_matches(sel, &dev) != cases[i].match)
			fail_msg("selector '%s' should %smatch", cases[i].selector,
				 cases[i].match ? "" : "not ");
	}
	dev.name = NULL;
	dev.pcie_root = NULL;
	cleanup_free struct vg_selector *sel = calloc(1, sizeof(*sel));
	assert_non_null(sel);
	assert_int_equal(vg_selector_parse("product!=x,pcie-root!=pci0000:10", sel, NULL), 0);
	assert_true(vg_selector_matches(sel, &dev));
}

static void selector_allocations(void **state)
{
	(void)state;
	struct table t = hgx();
	cleanup_free struct vg_gpu_request *numa1 = annotated("vmgpu.io/gpu-selector", "numa=1", "2");
	expect_chosen(t.dev, 8, numa1, WANT(4, 5));
	cleanup_free struct vg_gpu_request *h100 =
		annotated("vmgpu.io/gpu-selector", "product=h100", NULL);
	expect_chosen(t.dev, 8, h100, WANT(0));
	cleanup_free struct vg_gpu_request *roots4 =
		annotated("vmgpu.io/gpu-selector", "pcie-root in (pci0000:10, pci0000:90)", "4");
	expect_chosen(t.dev, 8, roots4, WANT(0, 1, 4, 5));
	cleanup_free struct vg_gpu_request *roots2 =
		annotated("vmgpu.io/gpu-selector", "pcie-root in (pci0000:10, pci0000:90)", "2");
	take(&t, 0, "allocated to sandbox web-1");
	/* 1 alone on pci0000:10, 4 and 5 together on pci0000:90. */
	expect_chosen(t.dev, 8, roots2, WANT(4, 5));
}

static void selector_without_match_is_not_found(void **state)
{
	(void)state;
	struct table t = hgx();
	cleanup_free struct vg_gpu_request *amd =
		annotated("vmgpu.io/gpu-selector", "vendor!=10de", NULL);
	expect_failure(t.dev, 8, amd, ENOENT,
		       "no GPU matches 'vendor!=10de' (this node has 8 GPUs: 8 x " H100
		       " (vendor 10de, device 2330))",
		       NULL);
	t.dev[7].name = "GA100[A100 PCIe 40GB]";
	t.dev[7].device_id = 0x20f1;
	expect_failure(t.dev, 8, amd, ENOENT,
		       "(this node has 8 GPUs: 7 x " H100 " (vendor 10de, device 2330), 1 x "
		       "GA100[A100 PCIe 40GB] (vendor 10de, device 20f1))",
		       NULL);
	expect_failure(t.dev, 0, amd, ENOENT, "no GPU matches 'vendor!=10de' (this node has no GPUs)",
		       NULL);
}

static void selector_with_busy_matches_is_exhausted(void **state)
{
	(void)state;
	struct table t = hgx();
	take(&t, 0, "allocated to sandbox a");
	take(&t, 1, "allocated to sandbox a");
	take(&t, 2, "allocated to sandbox b");
	take(&t, 3, "unhealthy: fell off the bus");
	cleanup_free struct vg_gpu_request *numa0 = annotated("vmgpu.io/gpu-selector", "numa=0", NULL);
	expect_failure(t.dev, 8, numa0, ENOSPC,
		       "requested 1 GPU matching 'numa=0' but only 0 of the 4 matching GPUs are "
		       "available (reasons for the others: 0000:18:00.0: allocated to sandbox a; "
		       "0000:1a:00.0: allocated to sandbox a; 0000:5d:00.0: allocated to sandbox b; "
		       "0000:5f:00.0: unhealthy: fell off the bus)",
		       NULL);
	/* Busy GPUs outside the selector are not listed. */
	take(&t, 7, "allocated to sandbox c");
	cleanup_free struct vg_gpu_request *numa1 = annotated("vmgpu.io/gpu-selector", "numa=1", "4");
	expect_failure(t.dev, 8, numa1, ENOSPC,
		       "requested 4 GPUs matching 'numa=1' but only 3 of the 4 matching GPUs are "
		       "available (reasons for the others: 0000:dd:00.0: allocated to sandbox c)",
		       NULL);
	cleanup_free struct vg_gpu_request *numa1_3 =
		annotated("vmgpu.io/gpu-selector", "numa=1", "3");
	expect_chosen(t.dev, 8, numa1_3, WANT(4, 5, 6));
	cleanup_free struct vg_gpu_request *many =
		annotated("vmgpu.io/gpu-selector", "numa=1", "5");
	t.dev[7].free = true;
	t.dev[7].why_not_free = NULL;
	expect_failure(t.dev, 8, many, ENOSPC,
		       "requested 5 GPUs matching 'numa=1' but only 4 of the 4 matching GPUs are "
		       "available",
		       NULL);
}

/* ---- GetPreferredAllocation ---- */

static const char *const all_ids[] = { "0000:18:00.0", "0000:1a:00.0", "0000:5d:00.0",
				       "0000:5f:00.0", "0000:9a:00.0", "0000:9c:00.0",
				       "0000:db:00.0", "0000:dd:00.0" };

static void expect_preferred(const char *const *avail, size_t n_avail, const char *const *must,
			     size_t n_must, size_t size, const char *want)
{
	struct table t = hgx();
	take(&t, 3, "reported Unhealthy: allocated to sandbox x"); /* free is not looked at */
	size_t chosen[8], n_chosen = 99;
	struct vg_error *err = NULL;
	int r = vg_prefer_allocation(t.dev, 8, avail, n_avail, must, n_must, size, chosen,
				     &n_chosen, &err);
	if (r != 0)
		fail_msg("preferred allocation failed: %s", err ? err->msg : "?");
	assert_int_equal(n_chosen, size);
	char got[256] = "";
	size_t len = 0;
	for (size_t i = 0; i < n_chosen; i++)
		len += (size_t)snprintf(got + len, sizeof(got) - len, "%s%s", i ? "," : "",
					t.dev[chosen[i]].bdf);
	assert_string_equal(got, want);
}

static void preferred_keeps_must_include_and_topology(void **state)
{
	(void)state;
	expect_preferred(all_ids, 8, NULL, 0, 2, "0000:18:00.0,0000:1a:00.0");
	expect_preferred(all_ids, 8, NULL, 0, 0, "");
	/* must_include is kept, and its root partner comes with it. */
	const char *const m2[] = { "0000:5f:00.0" };
	expect_preferred(all_ids, 8, m2, 1, 2, "0000:5d:00.0,0000:5f:00.0");
	const char *const m4[] = { "0000:9a:00.0" };
	expect_preferred(all_ids, 8, m4, 1, 4, "0000:9a:00.0,0000:9c:00.0,0000:db:00.0,0000:dd:00.0");
	/* Two nodes already: the third joins a root that is already touched, lowest first. */
	const char *const m04[] = { "0000:9a:00.0", "0000:18:00.0" };
	expect_preferred(all_ids, 8, m04, 2, 3, "0000:18:00.0,0000:1a:00.0,0000:9a:00.0");
	/* must_include alone fills the size. */
	expect_preferred(all_ids, 8, m04, 2, 2, "0000:18:00.0,0000:9a:00.0");
	expect_preferred(all_ids, 8, all_ids, 8, 8,
			 "0000:18:00.0,0000:1a:00.0,0000:5d:00.0,0000:5f:00.0,0000:9a:00.0,"
			 "0000:9c:00.0,0000:db:00.0,0000:dd:00.0");
}

static void preferred_prefers_one_node_and_one_root(void **state)
{
	(void)state;
	/* Same root beats same node with two roots and beats lower indexes. */
	const char *const a[] = { "0000:18:00.0", "0000:5d:00.0", "0000:9a:00.0", "0000:9c:00.0",
				  "0000:db:00.0" };
	expect_preferred(a, 5, NULL, 0, 2, "0000:9a:00.0,0000:9c:00.0");
	/* Only NUMA 1 holds three. */
	const char *const b[] = { "0000:18:00.0", "0000:1a:00.0", "0000:9a:00.0", "0000:9c:00.0",
				  "0000:DB:00.0" };
	expect_preferred(b, 5, NULL, 0, 3, "0000:9a:00.0,0000:9c:00.0,0000:db:00.0");
	/* With a must_include on NUMA 0 the rest stays on NUMA 0 where it can. */
	const char *const m[] = { "0000:1a:00.0" };
	expect_preferred(b, 5, m, 1, 2, "0000:18:00.0,0000:1a:00.0");
}

static void expect_preferred_error(const char *const *avail, size_t n_avail,
				   const char *const *must, size_t n_must, size_t size,
				   const char *message)
{
	struct table t = hgx();
	size_t chosen[8] = { 5, 5, 5, 5, 5, 5, 5, 5 }, n_chosen = 42;
	struct vg_error *err = NULL;
	int r = vg_prefer_allocation(t.dev, 8, avail, n_avail, must, n_must, size, chosen,
				     &n_chosen, &err);
	assert_int_equal(r, -EINVAL);
	assert_int_equal(vg_error_code(err), EINVAL);
	if (strstr(err->msg, message) == NULL)
		fail_msg("error '%s' does not contain '%s'", err->msg, message);
	assert_int_equal(n_chosen, 42);
	for (size_t i = 0; i < 8; i++)
		assert_int_equal(chosen[i], 5);
	vg_error_free(err);
}

static void preferred_errors(void **state)
{
	(void)state;
	const char *const m3[] = { "0000:18:00.0", "0000:1a:00.0", "0000:5d:00.0" };
	expect_preferred_error(all_ids, 8, m3, 3, 2,
			       "preferred allocation: must_include lists 3 devices but the "
			       "allocation size is 2");
	expect_preferred_error(all_ids, 3, NULL, 0, 4,
			       "preferred allocation: allocation size 4 exceeds the 3 available "
			       "devices");
	const char *const unknown[] = { "0000:18:00.0", "0000:77:00.0" };
	expect_preferred_error(unknown, 2, NULL, 0, 1,
			       "preferred allocation: available device 0000:77:00.0 is not a GPU on "
			       "this node");
	const char *const twice[] = { "0000:18:00.0", "0000:18:00.0" };
	expect_preferred_error(twice, 2, NULL, 0, 1,
			       "preferred allocation: available device 0000:18:00.0 is listed twice");
	const char *const outside[] = { "0000:dd:00.0" };
	expect_preferred_error(all_ids, 3, outside, 1, 2,
			       "preferred allocation: must_include device 0000:dd:00.0 is not among "
			       "the available devices");
	const char *const ghost[] = { "nvidia0" };
	expect_preferred_error(all_ids, 8, ghost, 1, 2,
			       "preferred allocation: must_include device nvidia0 is not a GPU on "
			       "this node");
	const char *const mtwice[] = { "0000:18:00.0", "0000:18:00.0" };
	expect_preferred_error(all_ids, 8, mtwice, 2, 2,
			       "preferred allocation: must_include device 0000:18:00.0 is listed "
			       "twice");
}

/* ---- a brute-force cross-check on random tables ---- */

struct cost {
	size_t numa, roots;
};

static struct cost cost_of(const struct vg_alloc_device *dev, const size_t *set, size_t k)
{
	struct cost c = { 0, 0 };
	for (size_t i = 0; i < k; i++) {
		bool numa_seen = false, root_seen = false;
		for (size_t j = 0; j < i; j++) {
			const struct vg_alloc_device *a = &dev[set[i]], *b = &dev[set[j]];
			numa_seen = numa_seen || a->numa_node == b->numa_node;
			root_seen = root_seen || (a->numa_node == b->numa_node &&
						  strcmp(a->pcie_root, b->pcie_root) == 0);
		}
		c.numa += !numa_seen;
		c.roots += !root_seen;
	}
	return c;
}

static bool lex_less(const size_t *a, const size_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return a[i] < b[i];
	return false;
}

/* The best k-set of pool positions (fixed ones always in), by exhaustive search. */
static void brute_force(const struct vg_alloc_device *dev, size_t n, const bool *pool,
			const bool *fixed, size_t k, size_t *best, size_t *n_best)
{
	struct cost best_cost = { SIZE_MAX, SIZE_MAX };
	*n_best = 0;
	for (unsigned mask = 0; mask < (1u << n); mask++) {
		size_t set[16], m = 0, added = 0;
		bool ok = true;
		for (size_t i = 0; i < n && ok; i++) {
			bool in = mask & (1u << i);
			if (fixed[i] && !in)
				ok = false;
			if (in && !fixed[i] && !pool[i])
				ok = false;
			if (in) {
				set[m++] = i;
				added += !fixed[i];
			}
		}
		if (!ok || added != k)
			continue;
		struct cost c = cost_of(dev, set, m);
		bool better = c.numa < best_cost.numa ||
			      (c.numa == best_cost.numa && c.roots < best_cost.roots);
		if (!better && c.numa == best_cost.numa && c.roots == best_cost.roots)
			better = lex_less(set, best, m);
		if (better) {
			best_cost = c;
			memcpy(best, set, m * sizeof(size_t));
			*n_best = m;
		}
	}
}

static void random_tables_match_brute_force(void **state)
{
	(void)state;
	static const char *const roots[] = { "pci0000:00", "pci0000:40", "pci0000:80", "" };
	static char bdfs[10][VG_BDF_STRLEN];
	srand(12345);
	for (int round = 0; round < 3000; round++) {
		size_t n = 1 + (size_t)(rand() % 10);
		struct vg_alloc_device dev[10];
		bool pool[10], none[10] = { false }, fixed[10];
		size_t n_free = 0;
		for (size_t i = 0; i < n; i++) {
			snprintf(bdfs[i], sizeof(bdfs[i]), "0000:%02x:00.0", (unsigned)(i + 1) & 0xff);
			dev[i] = (struct vg_alloc_device){ bdfs[i], (int)i, rand() % 4 - 1,
							   roots[rand() % 4], "GPU", 0x10de,
							   0x2330, rand() % 4 != 0, NULL };
			if (!dev[i].free)
				dev[i].why_not_free = "busy";
			pool[i] = dev[i].free;
			n_free += pool[i];
		}
		if (n_free == 0)
			continue;
		unsigned k = 1 + (unsigned)(rand() % (int)n_free);
		cleanup_free struct vg_gpu_request *req = count_request(k);
		size_t want[16], n_want;
		brute_force(dev, n, pool, none, k, want, &n_want);
		size_t got[VG_REQ_MAX_GPUS], n_got;
		assert_int_equal(vg_allocate(dev, n, req, got, &n_got, NULL), 0);
		assert_int_equal(n_got, n_want);
		assert_memory_equal(got, want, n_got * sizeof(size_t));

		/* The same table through GetPreferredAllocation, with a random must_include. */
		const char *avail[10], *must[10];
		size_t n_avail = 0, n_must = 0;
		for (size_t i = 0; i < n; i++) {
			fixed[i] = false;
			if (!pool[i])
				continue;
			avail[n_avail++] = dev[i].bdf;
			if (rand() % 4 == 0 && n_must < k) {
				must[n_must++] = dev[i].bdf;
				fixed[i] = true;
			}
		}
		bool rest[10];
		for (size_t i = 0; i < n; i++)
			rest[i] = pool[i] && !fixed[i];
		brute_force(dev, n, rest, fixed, k - n_must, want, &n_want);
		assert_int_equal(vg_prefer_allocation(dev, n, avail, n_avail, must, n_must, k, got,
						      &n_got, NULL),
				 0);
		assert_int_equal(n_got, n_want);
		assert_memory_equal(got, want, n_got * sizeof(size_t));
	}
}

/* A large node stays quick: 64 GPUs on 8 nodes, 32 roots, every size. */
static void large_tables_are_quick(void **state)
{
	(void)state;
	struct vg_alloc_device dev[64];
	char bdfs[64][VG_BDF_STRLEN], root_names[32][16];
	for (size_t i = 0; i < 32; i++)
		snprintf(root_names[i], sizeof(root_names[i]), "pci0000:%02zx", i * 8);
	for (size_t i = 0; i < 64; i++) {
		snprintf(bdfs[i], sizeof(bdfs[i]), "0000:%02x:00.0", (unsigned)(i + 1) & 0xff);
		dev[i] = (struct vg_alloc_device){ bdfs[i], (int)i, (int)(i / 8), root_names[i / 2],
						   "GPU", 0x10de, 0x2330, i % 3 != 0, NULL };
	}
	for (unsigned k = 1; k <= VG_REQ_MAX_GPUS; k++) {
		cleanup_free struct vg_gpu_request *req = count_request(k);
		size_t got[VG_REQ_MAX_GPUS], n_got;
		assert_int_equal(vg_allocate(dev, 64, req, got, &n_got, NULL), 0);
		assert_int_equal(n_got, k);
	}
	/* Each node has 5 free (i % 3 != 0 leaves 5 or 6 of 8): 5 fit one node. */
	cleanup_free struct vg_gpu_request *five = count_request(5);
	size_t got[VG_REQ_MAX_GPUS], n_got;
	assert_int_equal(vg_allocate(dev, 64, five, got, &n_got, NULL), 0);
	for (size_t i = 1; i < n_got; i++)
		assert_int_equal(dev[got[i]].numa_node, dev[got[0]].numa_node);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(count_picks_one_root_then_one_node),
		cmocka_unit_test(count_prefers_a_whole_root_over_low_indexes),
		cmocka_unit_test(count_four_with_gpu0_taken_picks_numa1),
		cmocka_unit_test(count_spanning_nodes_is_deterministic),
		cmocka_unit_test(count_too_large_is_resource_exhausted),
		cmocka_unit_test(count_reasons_are_truncated),
		cmocka_unit_test(none_and_zero_choose_nothing),
		cmocka_unit_test(devices_by_index_and_bdf),
		cmocka_unit_test(devices_same_gpu_twice),
		cmocka_unit_test(devices_unknown),
		cmocka_unit_test(devices_busy_with_reason),
		cmocka_unit_test(selector_matching),
		cmocka_unit_test(selector_allocations),
		cmocka_unit_test(selector_without_match_is_not_found),
		cmocka_unit_test(selector_with_busy_matches_is_exhausted),
		cmocka_unit_test(preferred_keeps_must_include_and_topology),
		cmocka_unit_test(preferred_prefers_one_node_and_one_root),
		cmocka_unit_test(preferred_errors),
		cmocka_unit_test(random_tables_match_brute_force),
		cmocka_unit_test(large_tables_are_quick),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

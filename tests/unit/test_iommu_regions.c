#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "lib/error.h"
#include "lib/gpu_filter.h"
#include "lib/host_checks.h"
#include "lib/iommu_group.h"

static void parses_kernel_reserved_regions(void **state)
{
	(void)state;
	struct vg_reserved_region *regions = NULL;
	size_t n = 0;
	const char *text = "0x0000000008000000 0x00000000080fffff msi\n"
			   "0x00000000c0000000 0x00000000c7ffffff direct\n"
			   "0x00000000fee00000 0x00000000feefffff direct-relaxable\n";
	assert_int_equal(vg_iommu_parse_reserved_regions(text, &regions, &n, NULL), 0);
	assert_int_equal(n, 3);
	assert_string_equal(regions[1].type, "direct");
	assert_true(regions[1].start == 0xc0000000ull);
	assert_true(regions[1].end == 0xc7ffffffull);
	assert_string_equal(regions[2].type, "direct-relaxable");
	free(regions);
}

static void rejects_garbage_regions(void **state)
{
	(void)state;
	struct vg_reserved_region *regions = NULL;
	size_t n = 0;
	struct vg_error *err = NULL;
	assert_true(vg_iommu_parse_reserved_regions("0x1 zz msi\n", &regions, &n, &err) < 0);
	assert_non_null(strstr(err->msg, "malformed reserved region"));
	vg_error_free(err);
	assert_null(regions);
}

static void filter_matches_vendor_class_ids_and_bdfs(void **state)
{
	(void)state;
	struct vg_gpu_filter f;
	struct vg_bdf bdf = { 0, 0x3b, 0, 0 };
	vg_gpu_filter_default(&f);
	assert_true(vg_gpu_filter_match(&f, &bdf, 0x10de, 0x2330, 0x030200));
	assert_true(vg_gpu_filter_match(&f, &bdf, 0x10de, 0x2684, 0x030000));
	assert_false(vg_gpu_filter_match(&f, &bdf, 0x10de, 0x22ba, 0x040300));
	assert_false(vg_gpu_filter_match(&f, &bdf, 0x1002, 0x740f, 0x038000));
	vg_gpu_filter_clear(&f);
	assert_int_equal(vg_gpu_filter_add_id(&f, "1234:11e8", NULL), 0);
	assert_int_equal(vg_gpu_filter_add_bdf(&f, "0000:00:05.0", NULL), 0);
	assert_true(vg_gpu_filter_match(&f, &bdf, 0x1234, 0x11e8, 0x00ff00));
	struct vg_bdf other = { 0, 0, 5, 0 };
	assert_true(vg_gpu_filter_match(&f, &other, 0x8086, 0x10d3, 0x020000));
	assert_false(vg_gpu_filter_match(&f, &bdf, 0x8086, 0x10d3, 0x020000));
	assert_true(vg_gpu_filter_add_id(&f, "1234", NULL) < 0);
	assert_true(vg_gpu_filter_add_vendor(&f, "0x10de0", NULL) < 0);
	assert_true(vg_gpu_filter_add_class(&f, "-302", NULL) < 0);
}

static void reads_qemu_versions(void **state)
{
	(void)state;
	char v[32];
	assert_int_equal(vg_parse_qemu_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7)\n",
					       v, sizeof(v)),
			 0);
	assert_string_equal(v, "7.2.19");
	assert_true(vg_parse_qemu_version("qemu: command not found", v, sizeof(v)) < 0);
	assert_string_equal(vg_qemu_binary_for_arch("aarch64"), "qemu-system-aarch64");
	assert_string_equal(vg_qemu_binary_for_arch("x86_64"), "qemu-system-x86_64");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parses_kernel_reserved_regions),
		cmocka_unit_test(rejects_garbage_regions),
		cmocka_unit_test(filter_matches_vendor_class_ids_and_bdfs),
		cmocka_unit_test(reads_qemu_versions),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

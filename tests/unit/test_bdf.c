#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "lib/bdf.h"
#include "lib/error.h"

static void parses_and_formats_canonically(void **state)
{
	(void)state;
	struct vg_bdf bdf;
	char text[VG_BDF_STRLEN];
	assert_int_equal(vg_bdf_parse("0000:3B:00.1", false, &bdf, NULL), 0);
	vg_bdf_format(&bdf, text);
	assert_string_equal(text, "0000:3b:00.1");
	assert_int_equal(vg_bdf_parse("000f:01:00.0", false, &bdf, NULL), 0);
	assert_int_equal(bdf.domain, 0xf);
	assert_int_equal(vg_bdf_parse("10000:00:01.0", false, &bdf, NULL), 0);
	vg_bdf_format(&bdf, text);
	assert_string_equal(text, "10000:00:01.0");
	assert_int_equal(vg_bdf_parse("3b:00.0", true, &bdf, NULL), 0);
	assert_int_equal(bdf.domain, 0);
}

static void rejects_malformed_addresses(void **state)
{
	(void)state;
	const char *bad[] = { "", "0000:3b:00", "0000:3b:00.8", "0000:3b:20.0", "000:3b:00.0",
			      "0000:3b:00.0,x", "0000:3b:0.0", "3b:00.0", "0000:3g:00.0",
			      "../../0000:3b:00.0", "0000:3b:00.0\n", "123456789:00:00.0" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct vg_error *err = NULL;
		struct vg_bdf bdf;
		assert_true(vg_bdf_parse(bad[i], false, &bdf, &err) < 0);
		assert_non_null(err);
		assert_non_null(strstr(err->msg, "is not a PCI address"));
		vg_error_free(err);
	}
}

static void orders_by_domain_bus_device_function(void **state)
{
	(void)state;
	struct vg_bdf a, b, c;
	vg_bdf_parse("0000:ff:1f.7", false, &a, NULL);
	vg_bdf_parse("0001:00:00.0", false, &b, NULL);
	vg_bdf_parse("0001:00:00.1", false, &c, NULL);
	assert_true(vg_bdf_compare(&a, &b) < 0);
	assert_true(vg_bdf_compare(&b, &c) < 0);
	assert_true(vg_bdf_same_slot(&b, &c));
	assert_false(vg_bdf_same_slot(&a, &b));
}

static void errors_keep_context_and_first_error(void **state)
{
	(void)state;
	struct vg_error *err = NULL;
	assert_int_equal(vg_error_set(&err, 2, "open %s", "x"), -2);
	assert_int_equal(vg_error_set(&err, 5, "second"), -5);
	assert_string_equal(err->msg, "open x");
	vg_error_prefix(&err, "bind %s", "0000:01:00.0");
	assert_string_equal(err->msg, "bind 0000:01:00.0: open x");
	assert_int_equal(vg_error_code(err), 2);
	vg_error_free(err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parses_and_formats_canonically),
		cmocka_unit_test(rejects_malformed_addresses),
		cmocka_unit_test(orders_by_domain_bus_device_function),
		cmocka_unit_test(errors_keep_context_and_first_error),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

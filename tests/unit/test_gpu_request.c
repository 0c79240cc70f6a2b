/* The sandbox request from vmgpu.io/ annotations: every key, every conflict, the selector. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "agent/gpu_request.h"
#include "lib/cleanup.h"
#include "lib/error.h"

struct parsed {
	struct vg_gpu_request gpu;
	struct vg_vm_shape vm;
};

static struct parsed *parse_ok(const struct vg_kv *kv, size_t n)
{
	struct parsed *p = calloc(1, sizeof(*p));
	assert_non_null(p);
	struct vg_error *err = NULL;
	int r = vg_sandbox_request_parse(kv, n, &p->gpu, &p->vm, &err);
	if (r != 0)
		fail_msg("expected success, got %d: %s", r, err ? err->msg : "(no message)");
	assert_null(err);
	return p;
}

/* Fails unless parsing fails with `code` and a message holding every NULL-terminated substring;
 * also checks that the outputs were left alone. */
static void expect_rejected_v(const struct vg_kv *kv, size_t n, int code, va_list ap)
{
	cleanup_free struct parsed *p = malloc(sizeof(*p));
	cleanup_free struct parsed *before = malloc(sizeof(*before));
	assert_non_null(p);
	assert_non_null(before);
	memset(p, 0xa5, sizeof(*p));
	memcpy(before, p, sizeof(*p));
	struct vg_error *err = NULL;
	int r = vg_sandbox_request_parse(kv, n, &p->gpu, &p->vm, &err);
	if (r >= 0 || err == NULL)
		fail_msg("expected failure for %s=%s", n ? kv[n - 1].key : "-", n ? kv[n - 1].value : "-");
	assert_int_equal(r, -code);
	assert_int_equal(vg_error_code(err), code);
	for (const char *want = va_arg(ap, const char *); want != NULL;
	     want = va_arg(ap, const char *))
		if (strstr(err->msg, want) == NULL)
			fail_msg("error '%s' does not contain '%s'", err->msg, want);
	assert_memory_equal(p, before, sizeof(*p));
	vg_error_free(err);
}

static void expect_rejected(const struct vg_kv *kv, size_t n, int code, ...)
{
	va_list ap;
	va_start(ap, code);
	expect_rejected_v(kv, n, code, ap);
	va_end(ap);
}

/* One annotation; a value that is rejected with EINVAL and these substrings. */
static void expect_bad(const char *key, const char *value, ...)
{
	struct vg_kv kv[] = { { "io.kubernetes.pod.name", "x" }, { key, value } };
	va_list ap;
	va_start(ap, value);
	expect_rejected_v(kv, 2, EINVAL, ap);
	va_end(ap);
}

static struct parsed *parse_one(const char *key, const char *value)
{
	struct vg_kv kv[] = { { key, value } };
	return parse_ok(kv, 1);
}

/* ---- plain cases ---- */

static void no_annotations_ask_for_nothing(void **state)
{
	(void)state;
	cleanup_free struct parsed *p = parse_ok(NULL, 0);
	assert_int_equal(p->gpu.kind, VG_REQ_NONE);
	assert_int_equal(p->gpu.count, 0);
	assert_false(p->vm.has_kernel || p->vm.has_initrd || p->vm.has_vcpus ||
		     p->vm.has_memory_mib || p->vm.has_cmdline || p->vm.has_modules ||
		     p->vm.has_network || p->vm.has_arch || p->vm.has_accel);
	assert_int_equal(p->vm.network, VG_VM_NETWORK_TAP);
}

static void other_keys_are_ignored(void **state)
{
	(void)state;
	struct vg_kv kv[] = {
		{ "io.kubernetes.pod.name", "web-1" },
		{ "vmgpu.iox/gpu", "whatever" },
		{ "example.com/vmgpu.io/gpu", "7" },
		{ "vmgpu.io", "x" },
		{ NULL, "no key" },
		{ "vmgpu.io/gpu-count", "2" },
		{ "gpu-count", "99" },
	};
	cleanup_free struct parsed *p = parse_ok(kv, VG_ARRAY_SIZE(kv));
	assert_int_equal(p->gpu.kind, VG_REQ_COUNT);
	assert_int_equal(p->gpu.count, 2);
}

static void unknown_vmgpu_keys_are_rejected(void **state)
{
	(void)state;
	expect_bad("vmgpu.io/gpus", "1", "unknown annotation vmgpu.io/gpus; known: ",
		   "vmgpu.io/gpu-count", "vmgpu.io/gpu-selector", "vmgpu.io/accel", NULL);
	expect_bad("vmgpu.io/", "1", "unknown annotation vmgpu.io/;", NULL);
	expect_bad("VMGPU.IO/gpu", "any", "unknown annotation VMGPU.IO/gpu;", NULL);
	expect_bad("vmgpu.io/GPU-count", "1", "unknown annotation vmgpu.io/GPU-count;", NULL);
	expect_bad("vmgpu.io/gpu-count ", "1", "unknown annotation vmgpu.io/gpu-count ;", NULL);
}

static void a_key_given_twice_is_rejected(void **state)
{
	(void)state;
	struct vg_kv kv[] = { { "vmgpu.io/vcpus", "2" }, { "vmgpu.io/vcpus", "2" } };
	expect_rejected(kv, 2, EINVAL, "annotation vmgpu.io/vcpus is given twice", NULL);
}

/* ---- GPU keys ---- */

static void gpu_count_accepts_0_to_16(void **state)
{
	(void)state;
	cleanup_free struct parsed *zero = parse_one("vmgpu.io/gpu-count", "0");
	assert_int_equal(zero->gpu.kind, VG_REQ_NONE);
	assert_int_equal(zero->gpu.count, 0);
	cleanup_free struct parsed *one = parse_one("vmgpu.io/gpu-count", "1");
	assert_int_equal(one->gpu.kind, VG_REQ_COUNT);
	assert_int_equal(one->gpu.count, 1);
	assert_false(one->gpu.any);
	cleanup_free struct parsed *max = parse_one("vmgpu.io/gpu-count", "16");
	assert_int_equal(max->gpu.count, 16);
	cleanup_free struct parsed *lead = parse_one("vmgpu.io/gpu-count", "02");
	assert_int_equal(lead->gpu.count, 2);
}

static void gpu_count_rejects_the_rest(void **state)
{
	(void)state;
	const char *bad[] = { "", "-1", "17", "abc", " 2", "2 ", "1.5", "+2", "0x2", "99999999999" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(bad); i++)
		expect_bad("vmgpu.io/gpu-count", bad[i], "vmgpu.io/gpu-count: invalid value '",
			   "expected an integer from 0 (no GPU) to 16", NULL);
	expect_bad("vmgpu.io/gpu-count", "17", "invalid value '17'", NULL);
	expect_bad("vmgpu.io/gpu-count", NULL, "vmgpu.io/gpu-count: invalid value ''", NULL);
	expect_bad("vmgpu.io/gpu-count", "1\n", "invalid value '1?'", NULL);
}

static void gpu_any_in_any_case(void **state)
{
	(void)state;
	const char *ok[] = { "any", "ANY", "Any" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(ok); i++) {
		cleanup_free struct parsed *p = parse_one("vmgpu.io/gpu", ok[i]);
		assert_int_equal(p->gpu.kind, VG_REQ_COUNT);
		assert_int_equal(p->gpu.count, 1);
		assert_true(p->gpu.any);
	}
	const char *bad[] = { "", "all", "1", "any ", "true" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(bad); i++)
		expect_bad("vmgpu.io/gpu", bad[i], "vmgpu.io/gpu: invalid value '",
			   "expected \"any\" (one GPU of any kind)", NULL);
}

static void gpu_devices_by_bdf_and_index(void **state)
{
	(void)state;
	cleanup_free struct parsed *p =
		parse_one("vmgpu.io/gpu-devices", "0000:2D:00.0, 1 ,\t7,01234:5a:1f.7,010");
	assert_int_equal(p->gpu.kind, VG_REQ_DEVICES);
	assert_int_equal(p->gpu.count, 5);
	assert_int_equal(p->gpu.n_devices, 5);
	assert_false(p->gpu.devices[0].is_index);
	assert_string_equal(p->gpu.devices[0].text, "0000:2d:00.0");
	assert_int_equal(p->gpu.devices[0].addr.bus, 0x2d);
	assert_true(p->gpu.devices[1].is_index);
	assert_int_equal(p->gpu.devices[1].index, 1);
	assert_string_equal(p->gpu.devices[1].text, "1");
	assert_string_equal(p->gpu.devices[2].text, "7");
	assert_string_equal(p->gpu.devices[3].text, "1234:5a:1f.7");
	assert_int_equal(p->gpu.devices[3].addr.domain, 0x1234);
	assert_string_equal(p->gpu.devices[4].text, "10");
}

static void gpu_devices_rejects_bad_items(void **state)
{
	(void)state;
	expect_bad("vmgpu.io/gpu-devices", "", "vmgpu.io/gpu-devices: invalid value ''",
		   "a comma-separated list of GPU indexes or PCI addresses", NULL);
	expect_bad("vmgpu.io/gpu-devices", "  ", "vmgpu.io/gpu-devices: invalid value '  '", NULL);
	expect_bad("vmgpu.io/gpu-devices", "0,,1", "vmgpu.io/gpu-devices: empty item in '0,,1'",
		   NULL);
	expect_bad("vmgpu.io/gpu-devices", "0,", "vmgpu.io/gpu-devices: empty item in '0,'", NULL);
	const char *bad[] = { "gpu0", "2d:00.0", "0000:2d:00.8", "-1", "0000:2d:00.0:1", "1 2",
			      "0000:2d:00.0/", "0x1" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(bad); i++) {
		char want[96];
		snprintf(want, sizeof(want), "vmgpu.io/gpu-devices: '%s' is neither a GPU index nor a "
					     "PCI address",
			 bad[i]);
		expect_bad("vmgpu.io/gpu-devices", bad[i], want, "DDDD:BB:DD.F", NULL);
	}
	expect_bad("vmgpu.io/gpu-devices", "65536",
		   "vmgpu.io/gpu-devices: index 65536 is out of range (0 to 65535)", NULL);
	expect_bad("vmgpu.io/gpu-devices", "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16",
		   "vmgpu.io/gpu-devices: more than 16 GPUs", NULL);
}

static void gpu_devices_rejects_duplicates(void **state)
{
	(void)state;
	expect_bad("vmgpu.io/gpu-devices", "1, 3, 01", "vmgpu.io/gpu-devices: GPU 1 is listed twice",
		   NULL);
	expect_bad("vmgpu.io/gpu-devices", "0000:2d:00.0,0000:2D:00.0",
		   "vmgpu.io/gpu-devices: GPU 0000:2d:00.0 is listed twice", NULL);
	/* A BDF and an index of the same GPU are the allocator's to catch: it knows the table. */
	cleanup_free struct parsed *p = parse_one("vmgpu.io/gpu-devices", "0,0000:18:00.0");
	assert_int_equal(p->gpu.n_devices, 2);
}

/* ---- the selector ---- */

static struct vg_selector *selector_ok(const char *text)
{
	struct vg_selector *sel = calloc(1, sizeof(*sel));
	assert_non_null(sel);
	struct vg_error *err = NULL;
	if (vg_selector_parse(text, sel, &err) != 0)
		fail_msg("selector '%s' rejected: %s", text, err ? err->msg : "?");
	return sel;
}

static void selector_forms(void **state)
{
	(void)state;
	cleanup_free struct vg_selector *eq = selector_ok(" product=H100 SXM5 ");
	assert_string_equal(eq->text, "product=H100 SXM5");
	assert_int_equal(eq->n_terms, 1);
	assert_int_equal(eq->terms[0].key, VG_SEL_PRODUCT);
	assert_int_equal(eq->terms[0].op, VG_SEL_EQ);
	assert_int_equal(eq->terms[0].n_values, 1);
	assert_string_equal(eq->terms[0].values[0].text, "H100 SXM5");

	cleanup_free struct vg_selector *many =
		selector_ok("numa in ( 0 , 1 ),vendor != 0x10DE , device=2330,"
			    "pcie-root in(PCI0000:10,pci0000:D0),numa=-1");
	assert_int_equal(many->n_terms, 5);
	assert_int_equal(many->terms[0].key, VG_SEL_NUMA);
	assert_int_equal(many->terms[0].op, VG_SEL_IN);
	assert_int_equal(many->terms[0].n_values, 2);
	assert_int_equal(many->terms[0].values[0].number, 0);
	assert_int_equal(many->terms[0].values[1].number, 1);
	assert_int_equal(many->terms[1].key, VG_SEL_VENDOR);
	assert_int_equal(many->terms[1].op, VG_SEL_NE);
	assert_int_equal(many->terms[1].values[0].number, 0x10de);
	assert_string_equal(many->terms[1].values[0].text, "10de");
	assert_int_equal(many->terms[2].key, VG_SEL_DEVICE);
	assert_int_equal(many->terms[2].values[0].number, 0x2330);
	assert_int_equal(many->terms[3].key, VG_SEL_PCIE_ROOT);
	assert_string_equal(many->terms[3].values[0].text, "pci0000:10");
	assert_string_equal(many->terms[3].values[1].text, "pci0000:d0");
	assert_int_equal(many->terms[4].values[0].number, -1);

	/* Keys and the word "in" in any case; an 8-digit VMD domain in a root. */
	cleanup_free struct vg_selector *cases =
		selector_ok("Product=h100,NUMA IN (1),Pcie-Root=pci10000:00");
	assert_int_equal(cases->terms[0].key, VG_SEL_PRODUCT);
	assert_int_equal(cases->terms[1].key, VG_SEL_NUMA);
	assert_int_equal(cases->terms[1].op, VG_SEL_IN);
	assert_string_equal(cases->terms[2].values[0].text, "pci10000:00");
	assert_string_equal(vg_selector_key_name(VG_SEL_PCIE_ROOT), "pcie-root");
}

static void selector_through_the_annotation(void **state)
{
	(void)state;
	cleanup_free struct parsed *p = parse_one("vmgpu.io/gpu-selector", "product=H100,numa=0");
	assert_int_equal(p->gpu.kind, VG_REQ_SELECTOR);
	assert_int_equal(p->gpu.count, 1);
	assert_int_equal(p->gpu.selector.n_terms, 2);
	struct vg_kv kv[] = { { "vmgpu.io/gpu-count", "3" }, { "vmgpu.io/gpu-selector", "numa=1" } };
	cleanup_free struct parsed *q = parse_ok(kv, 2);
	assert_int_equal(q->gpu.kind, VG_REQ_SELECTOR);
	assert_int_equal(q->gpu.count, 3);
}

#define SEL "vmgpu.io/gpu-selector"

static void selector_rejects_malformed_terms(void **state)
{
	(void)state;
	expect_bad(SEL, "", SEL ": empty selector; expected terms such as product=H100,numa=0", NULL);
	expect_bad(SEL, "  ", SEL ": empty selector", NULL);
	expect_bad(SEL, "foo=bar", SEL ": unknown key 'foo' in term 'foo=bar'; known keys: product, "
				   "vendor, device, numa, pcie-root",
		   NULL);
	expect_bad(SEL, "numa=0,gpu in (a,b)", SEL ": unknown key 'gpu' in term 'gpu in (a,b)'",
		   NULL);
	expect_bad(SEL, "product", SEL ": malformed term 'product'; expected key=value, "
				   "key!=value or key in (v1, v2, ...)",
		   NULL);
	expect_bad(SEL, "numa<1", SEL ": malformed term 'numa<1'", NULL);
	expect_bad(SEL, "numa ~ 1", SEL ": malformed term 'numa ~ 1'", NULL);
	expect_bad(SEL, "=H100", SEL ": malformed term '=H100': no key before the operator", NULL);
	expect_bad(SEL, "product=", SEL ": term 'product=': empty value for product", NULL);
	expect_bad(SEL, "numa != ", SEL ": term 'numa !=': empty value for numa", NULL);
	expect_bad(SEL, "product=a=b", SEL ": term 'product=a=b': value 'a=b' holds '='", NULL);
	expect_bad(SEL, "product==H100", SEL ": term 'product==H100': value '=H100' holds '='",
		   NULL);
	expect_bad(SEL, "product=H!", SEL ": term 'product=H!': value 'H!' holds '!'", NULL);
	expect_bad(SEL, "numa=(0)",
		   SEL ": malformed term 'numa=(0)': a list in parentheses needs 'in', as in numa in "
		       "(a, b)",
		   NULL);
	expect_bad(SEL, "numa in 0,1",
		   SEL ": malformed term 'numa in 0': 'in' takes a list in parentheses", NULL);
	expect_bad(SEL, "numa in (0) x", SEL ": malformed term 'numa in (0) x'", NULL);
	expect_bad(SEL, "numa in ()", SEL ": term 'numa in ()': empty list after 'in'", NULL);
	expect_bad(SEL, "numa in ( )", SEL ": term 'numa in ( )': empty list after 'in'", NULL);
	expect_bad(SEL, "numa in (0,,1)", SEL ": term 'numa in (0,,1)': empty value for numa", NULL);
	expect_bad(SEL, "numa in (0,)", SEL ": term 'numa in (0,)': empty value for numa", NULL);
	expect_bad(SEL, "product=H100,,numa=0",
		   SEL ": empty term in 'product=H100,,numa=0' (a stray comma?)", NULL);
	expect_bad(SEL, "product=H100,", SEL ": empty term in 'product=H100,'", NULL);
	expect_bad(SEL, ",numa=0", SEL ": empty term in ',numa=0'", NULL);
	expect_bad(SEL, "product=H\x01", SEL ": term 'product=H?': value 'H?' holds '?'", NULL);
}

static void selector_rejects_unbalanced_parentheses(void **state)
{
	(void)state;
	expect_bad(SEL, "numa in (0,1",
		   SEL ": unbalanced or nested parentheses in term 'numa in (0,1'", NULL);
	expect_bad(SEL, "product=H100, numa in (0, 1",
		   SEL ": unbalanced or nested parentheses in term 'numa in (0, 1'", NULL);
	expect_bad(SEL, "numa=0),product=x",
		   SEL ": unbalanced or nested parentheses in term 'numa=0)'", NULL);
	expect_bad(SEL, "numa in ((0))",
		   SEL ": unbalanced or nested parentheses in term 'numa in ((0))'", NULL);
	expect_bad(SEL, "numa in (0)),x=1",
		   SEL ": unbalanced or nested parentheses in term 'numa in (0))'", NULL);
}

static void selector_rejects_bad_values(void **state)
{
	(void)state;
	const char *ids[] = { "vendor=10d", "vendor=0x10de0", "vendor=10dg", "vendor=0x",
			      "device=-1" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(ids); i++)
		expect_bad(SEL, ids[i], "is not a PCI id; expected 4 hex digits such as 10de or 0x10de",
			   NULL);
	expect_bad(SEL, "vendor in (10de, nvidia)",
		   SEL ": term 'vendor in (10de, nvidia)': vendor 'nvidia' is not a PCI id", NULL);
	expect_bad(SEL, "device=23300", SEL ": term 'device=23300': device '23300' is not a PCI id",
		   NULL);
	const char *numas[] = { "numa=abc", "numa=-2", "numa=65536", "numa=1.0", "numa=+1",
				"numa=--1" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(numas); i++)
		expect_bad(SEL, numas[i], "is not a NUMA node; expected an integer from -1 (unknown) "
					  "to 65535",
			   NULL);
	const char *roots[] = { "pcie-root=0000:10", "pcie-root=pci0000:1", "pcie-root=pci000:10",
				"pcie-root=pci0000-10", "pcie-root=pcix000:10",
				"pcie-root=pci000000000:10" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(roots); i++)
		expect_bad(SEL, roots[i], "is not a PCIe root bus; expected pciDDDD:BB such as pci0000:10",
			   NULL);
	char long_value[100];
	memset(long_value, 'x', sizeof(long_value));
	memcpy(long_value, "product=", 8);
	long_value[99] = '\0';
	expect_bad(SEL, long_value, "value for product is longer than 63 characters", NULL);
}

static void selector_limits(void **state)
{
	(void)state;
	expect_bad(SEL, "numa=0,numa=0,numa=0,numa=0,numa=0,numa=0,numa=0,numa=0,numa=0",
		   SEL ": more than 8 terms in 'numa=0,", NULL);
	cleanup_free struct vg_selector *eight =
		selector_ok("numa=0,numa=0,numa=0,numa=0,numa=0,numa=0,numa=0,numa=0");
	assert_int_equal(eight->n_terms, 8);
	expect_bad(SEL, "numa in (0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16)",
		   SEL ": term 'numa in (0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16)': more than 16 "
		       "values in the list",
		   NULL);
	char text[600];
	memset(text, 'a', sizeof(text));
	memcpy(text, "product=", 8);
	text[599] = '\0';
	expect_bad(SEL, text, SEL ": longer than 511 characters", NULL);
}

/* ---- the VM's shape ---- */

static void vm_shape_every_key(void **state)
{
	(void)state;
	struct vg_kv kv[] = {
		{ "vmgpu.io/kernel", "/var/lib/vmgpu/vmlinuz" },
		{ "vmgpu.io/initrd", "/var/lib/vmgpu/initrd.img" },
		{ "vmgpu.io/vcpus", "4" },
		{ "vmgpu.io/memory-mib", "2048" },
		{ "vmgpu.io/cmdline", "console=ttyS0 quiet" },
		{ "vmgpu.io/modules", "nvidia, nvidia_uvm ,vfio-pci" },
		{ "vmgpu.io/network", "none" },
		{ "vmgpu.io/arch", "aarch64" },
		{ "vmgpu.io/accel", "tcg" },
	};
	cleanup_free struct parsed *p = parse_ok(kv, VG_ARRAY_SIZE(kv));
	const struct vg_vm_shape *vm = &p->vm;
	assert_int_equal(p->gpu.kind, VG_REQ_NONE);
	assert_true(vm->has_kernel && vm->has_initrd && vm->has_vcpus && vm->has_memory_mib &&
		    vm->has_cmdline && vm->has_modules && vm->has_network && vm->has_arch &&
		    vm->has_accel);
	assert_string_equal(vm->kernel, "/var/lib/vmgpu/vmlinuz");
	assert_string_equal(vm->initrd, "/var/lib/vmgpu/initrd.img");
	assert_int_equal(vm->vcpus, 4);
	assert_int_equal(vm->memory_mib, 2048);
	assert_string_equal(vm->cmdline, "console=ttyS0 quiet");
	assert_int_equal(vm->n_modules, 3);
	assert_string_equal(vm->modules[0], "nvidia");
	assert_string_equal(vm->modules[1], "nvidia_uvm");
	assert_string_equal(vm->modules[2], "vfio-pci");
	assert_int_equal(vm->network, VG_VM_NETWORK_NONE);
	assert_int_equal(vm->arch, VG_VM_ARCH_AARCH64);
	assert_int_equal(vm->accel, VG_VM_ACCEL_TCG);
}

static void vm_shape_bounds_and_other_values(void **state)
{
	(void)state;
	struct vg_kv low[] = { { "vmgpu.io/vcpus", "1" },     { "vmgpu.io/memory-mib", "64" },
			       { "vmgpu.io/network", "tap" }, { "vmgpu.io/arch", "x86_64" },
			       { "vmgpu.io/accel", "kvm" },   { "vmgpu.io/modules", "" },
			       { "vmgpu.io/cmdline", "" } };
	cleanup_free struct parsed *p = parse_ok(low, VG_ARRAY_SIZE(low));
	assert_int_equal(p->vm.vcpus, 1);
	assert_int_equal(p->vm.memory_mib, 64);
	assert_true(p->vm.has_network);
	assert_int_equal(p->vm.network, VG_VM_NETWORK_TAP);
	assert_int_equal(p->vm.arch, VG_VM_ARCH_X86_64);
	assert_int_equal(p->vm.accel, VG_VM_ACCEL_KVM);
	assert_true(p->vm.has_modules);
	assert_int_equal(p->vm.n_modules, 0);
	assert_true(p->vm.has_cmdline);
	assert_string_equal(p->vm.cmdline, "");

	char cmdline[512];
	memset(cmdline, 'x', 511);
	cmdline[511] = '\0';
	struct vg_kv high[] = { { "vmgpu.io/vcpus", "256" },
				{ "vmgpu.io/memory-mib", "4194304" },
				{ "vmgpu.io/cmdline", cmdline },
				{ "vmgpu.io/modules", "a,b,c,d,e,f,g,h" } };
	cleanup_free struct parsed *q = parse_ok(high, VG_ARRAY_SIZE(high));
	assert_int_equal(q->vm.vcpus, 256);
	assert_int_equal(q->vm.memory_mib, 4194304);
	assert_int_equal(strlen(q->vm.cmdline), 511);
	assert_int_equal(q->vm.n_modules, 8);
}

static void vm_shape_rejects_bad_values(void **state)
{
	(void)state;
	expect_bad("vmgpu.io/kernel", "vmlinuz",
		   "vmgpu.io/kernel: invalid value 'vmlinuz': expected an absolute path", NULL);
	expect_bad("vmgpu.io/kernel", "", "vmgpu.io/kernel: invalid value '': expected an absolute "
					  "path",
		   NULL);
	expect_bad("vmgpu.io/initrd", "./initrd", "vmgpu.io/initrd: invalid value './initrd'", NULL);
	expect_bad("vmgpu.io/kernel", "/boot/vm\nlinuz",
		   "vmgpu.io/kernel: invalid value '/boot/vm?linuz': expected a path without control "
		   "characters",
		   NULL);
	char *long_path = malloc(5000);
	assert_non_null(long_path);
	memset(long_path, 'a', 4999);
	long_path[0] = '/';
	long_path[4999] = '\0';
	expect_bad("vmgpu.io/initrd", long_path, "vmgpu.io/initrd: path is longer than 4095 "
						 "characters",
		   NULL);
	free(long_path);

	const char *vcpus[] = { "0", "257", "", "4x", "-1", "four" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(vcpus); i++)
		expect_bad("vmgpu.io/vcpus", vcpus[i], "vmgpu.io/vcpus: invalid value '",
			   "expected an integer from 1 to 256", NULL);
	const char *mem[] = { "63", "4194305", "1G", "", "2048 " };
	for (size_t i = 0; i < VG_ARRAY_SIZE(mem); i++)
		expect_bad("vmgpu.io/memory-mib", mem[i], "vmgpu.io/memory-mib: invalid value '",
			   "expected an integer from 64 to 4194304 (MiB)", NULL);

	expect_bad("vmgpu.io/cmdline", "quiet\ninit=/bin/sh",
		   "vmgpu.io/cmdline: control character 0x0a at offset 5", NULL);
	expect_bad("vmgpu.io/cmdline", "a\tb", "vmgpu.io/cmdline: control character 0x09 at offset 1",
		   NULL);
	char cmdline[513];
	memset(cmdline, 'x', 512);
	cmdline[512] = '\0';
	expect_bad("vmgpu.io/cmdline", cmdline,
		   "vmgpu.io/cmdline: 512 characters, more than the 511 allowed", NULL);

	expect_bad("vmgpu.io/modules", "Nvidia",
		   "vmgpu.io/modules: 'Nvidia' is not a module name; expected 1 to 63 characters of "
		   "[a-z0-9_-]",
		   NULL);
	expect_bad("vmgpu.io/modules", "nv idia", "vmgpu.io/modules: 'nv idia' is not a module name",
		   NULL);
	expect_bad("vmgpu.io/modules", "../x", "vmgpu.io/modules: '../x' is not a module name", NULL);
	expect_bad("vmgpu.io/modules", "a,,b", "vmgpu.io/modules: empty item in 'a,,b'", NULL);
	expect_bad("vmgpu.io/modules", "a,", "vmgpu.io/modules: empty item in 'a,'", NULL);
	expect_bad("vmgpu.io/modules", "nvidia, nvidia", "vmgpu.io/modules: 'nvidia' is listed twice",
		   NULL);
	expect_bad("vmgpu.io/modules", "a,b,c,d,e,f,g,h,i", "vmgpu.io/modules: more than 8 modules",
		   NULL);
	char name[80];
	memset(name, 'm', 64);
	name[64] = '\0';
	expect_bad("vmgpu.io/modules", name, "vmgpu.io/modules: '", "' is not a module name", NULL);

	const char *nets[] = { "TAP", "bridge", "", "tap " };
	for (size_t i = 0; i < VG_ARRAY_SIZE(nets); i++)
		expect_bad("vmgpu.io/network", nets[i], "vmgpu.io/network: invalid value '",
			   "expected \"tap\" or \"none\"", NULL);
	const char *arches[] = { "x86-64", "arm64", "X86_64", "" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(arches); i++)
		expect_bad("vmgpu.io/arch", arches[i], "vmgpu.io/arch: invalid value '",
			   "expected \"x86_64\" or \"aarch64\"", NULL);
	const char *accels[] = { "KVM", "hvf", "" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(accels); i++)
		expect_bad("vmgpu.io/accel", accels[i], "vmgpu.io/accel: invalid value '",
			   "expected \"kvm\" or \"tcg\"", NULL);
}

/* ---- conflicts ---- */

static void expect_conflict(const char *k1, const char *v1, const char *k2, const char *v2,
			    const char *message)
{
	struct vg_kv kv[] = { { k1, v1 }, { k2, v2 } };
	expect_rejected(kv, 2, EINVAL, message, NULL);
	/* The order of the annotations does not matter. */
	struct vg_kv swapped[] = { { k2, v2 }, { k1, v1 } };
	expect_rejected(swapped, 2, EINVAL, message, NULL);
}

static void conflicting_keys_are_named(void **state)
{
	(void)state;
	expect_conflict("vmgpu.io/gpu", "any", "vmgpu.io/gpu-devices", "0",
			"vmgpu.io/gpu conflicts with vmgpu.io/gpu-devices: ask for any GPU or name "
			"the GPUs, not both");
	expect_conflict("vmgpu.io/gpu", "any", "vmgpu.io/gpu-selector", "numa=0",
			"vmgpu.io/gpu conflicts with vmgpu.io/gpu-selector: ask for any GPU or "
			"select GPUs by attribute, not both");
	expect_conflict("vmgpu.io/gpu-devices", "0", "vmgpu.io/gpu-selector", "numa=0",
			"vmgpu.io/gpu-devices conflicts with vmgpu.io/gpu-selector: name the GPUs or "
			"select them by attribute, not both");
	expect_conflict("vmgpu.io/gpu-count", "2", "vmgpu.io/gpu", "any",
			"vmgpu.io/gpu-count conflicts with vmgpu.io/gpu: the count is 2 but "
			"vmgpu.io/gpu=any asks for exactly one GPU");
	expect_conflict("vmgpu.io/gpu-count", "0", "vmgpu.io/gpu", "any",
			"vmgpu.io/gpu-count conflicts with vmgpu.io/gpu: the count is 0");
	expect_conflict("vmgpu.io/gpu-count", "3", "vmgpu.io/gpu-devices", "0,1",
			"vmgpu.io/gpu-count conflicts with vmgpu.io/gpu-devices: the count is 3 but "
			"the list names 2 GPUs");
	expect_conflict("vmgpu.io/gpu-count", "2", "vmgpu.io/gpu-devices", "5",
			"the count is 2 but the list names 1 GPU");
	expect_conflict("vmgpu.io/gpu-count", "0", "vmgpu.io/gpu-selector", "numa=0",
			"vmgpu.io/gpu-count conflicts with vmgpu.io/gpu-selector: the count is 0 but a "
			"selector asks for at least one GPU");
}

static void agreeing_keys_are_fine(void **state)
{
	(void)state;
	struct vg_kv any[] = { { "vmgpu.io/gpu-count", "1" }, { "vmgpu.io/gpu", "any" } };
	cleanup_free struct parsed *p = parse_ok(any, 2);
	assert_int_equal(p->gpu.kind, VG_REQ_COUNT);
	assert_int_equal(p->gpu.count, 1);
	assert_true(p->gpu.any);
	struct vg_kv devices[] = { { "vmgpu.io/gpu-devices", "0, 0000:2a:00.0" },
				   { "vmgpu.io/gpu-count", "2" } };
	cleanup_free struct parsed *q = parse_ok(devices, 2);
	assert_int_equal(q->gpu.kind, VG_REQ_DEVICES);
	assert_int_equal(q->gpu.count, 2);
}

static void first_bad_annotation_wins(void **state)
{
	(void)state;
	/* A malformed value is reported before any conflict, in the order given. */
	struct vg_kv kv[] = { { "vmgpu.io/gpu", "any" },
			      { "vmgpu.io/vcpus", "0" },
			      { "vmgpu.io/gpu-devices", "x" } };
	expect_rejected(kv, 3, EINVAL, "vmgpu.io/vcpus: invalid value '0'", NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(no_annotations_ask_for_nothing),
		cmocka_unit_test(other_keys_are_ignored),
		cmocka_unit_test(unknown_vmgpu_keys_are_rejected),
		cmocka_unit_test(a_key_given_twice_is_rejected),
		cmocka_unit_test(gpu_count_accepts_0_to_16),
		cmocka_unit_test(gpu_count_rejects_the_rest),
		cmocka_unit_test(gpu_any_in_any_case),
		cmocka_unit_test(gpu_devices_by_bdf_and_index),
		cmocka_unit_test(gpu_devices_rejects_bad_items),
		cmocka_unit_test(gpu_devices_rejects_duplicates),
		cmocka_unit_test(selector_forms),
		cmocka_unit_test(selector_through_the_annotation),
		cmocka_unit_test(selector_rejects_malformed_terms),
		cmocka_unit_test(selector_rejects_unbalanced_parentheses),
		cmocka_unit_test(selector_rejects_bad_values),
		cmocka_unit_test(selector_limits),
		cmocka_unit_test(vm_shape_every_key),
		cmocka_unit_test(vm_shape_bounds_and_other_values),
		cmocka_unit_test(vm_shape_rejects_bad_values),
		cmocka_unit_test(conflicting_keys_are_named),
		cmocka_unit_test(agreeing_keys_are_fine),
		cmocka_unit_test(first_bad_annotation_wins),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

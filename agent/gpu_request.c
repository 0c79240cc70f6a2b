#include "agent/gpu_request.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/cleanup.h"
#include "lib/error.h"

/* ---- small text helpers ---- */

#define QUOTE_MAX 72

/* A value fit for an error message: at most 64 bytes, control bytes shown as '?'. */
static const char *quote(const char *s, char out[QUOTE_MAX])
{
	size_t i = 0;
	for (; s[i] != '\0' && i < 64; i++)
		out[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
	if (s[i] != '\0') {
		memcpy(out + i, "...", 3);
		i += 3;
	}
	out[i] = '\0';
	return out;
}
#define Q(s) quote((s), (char[QUOTE_MAX]){ 0 })

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

static bool has_control(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

/* A [start, end) slice of a string, trimmed of blanks by span_trim. */
struct span {
	const char *p;
	size_t len;
};

static struct span span_trim(struct span s)
{
	while (s.len > 0 && is_space(s.p[0])) {
		s.p++;
		s.len--;
	}
	while (s.len > 0 && is_space(s.p[s.len - 1]))
		s.len--;
	return s;
}

/* Copies the slice with a NUL; false when it does not fit. */
static bool span_copy(struct span s, char *out, size_t size)
{
	if (s.len >= size)
		return false;
	memcpy(out, s.p, s.len);
	out[s.len] = '\0';
	return true;
}

/* Strict decimal: an optional '-' (only when min < 0), then 1..10 digits, nothing else. */
static bool parse_decimal(struct span s, long min, long max, long *out)
{
	size_t i = 0;
	bool negative = false;
	if (s.len > 0 && s.p[0] == '-' && min < 0) {
		negative = true;
		i = 1;
	}
	if (s.len == i || s.len - i > 10)
		return false;
	long v = 0;
	for (; i < s.len; i++) {
		if (!isdigit((unsigned char)s.p[i]))
			return false;
		v = v * 10 + (s.p[i] - '0');
	}
	if (negative)
		v = -v;
	if (v < min || v > max)
		return false;
	*out = v;
	return true;
}

static struct span span_of(const char *s)
{
	return (struct span){ s, strlen(s) };
}

/* ---- the selector ---- */

#define SELECTOR_KEY "vmgpu.io/gpu-selector"
#define SELECTOR_FORMS "expected key=value, key!=value or key in (v1, v2, ...)"
#define SELECTOR_KEYS "product, vendor, device, numa, pcie-root"
/* Characters a selector value may not hold: they belong to the grammar. */
#define SELECTOR_SPECIALS ",()=!"

static const char *const selector_key_names[] = {
	[VG_SEL_PRODUCT] = "product", [VG_SEL_VENDOR] = "vendor", [VG_SEL_DEVICE] = "device",
	[VG_SEL_NUMA] = "numa",	      [VG_SEL_PCIE_ROOT] = "pcie-root",
};

const char *vg_selector_key_name(enum vg_selector_key key)
{
	if ((size_t)key >= VG_ARRAY_SIZE(selector_key_names))
		return "?";
	return selector_key_names[key];
}

static bool is_hex(char c)
{
	return isxdigit((unsigned char)c) != 0;
}

/* A 4-digit hex PCI id, with or without 0x. */
static bool parse_pci_id(struct span s, struct vg_selector_value *v)
{
	if (s.len >= 2 && s.p[0] == '0' && (s.p[1] == 'x' || s.p[1] == 'X')) {
		s.p += 2;
		s.len -= 2;
	}
	if (s.len != 4)
		return false;
	for (size_t i = 0; i < 4; i++) {
		if (!is_hex(s.p[i]))
			return false;
		v->text[i] = (char)tolower((unsigned char)s.p[i]);
	}
	v->text[4] = '\0';
	v->number = strtol(v->text, NULL, 16);
	return true;
}

/* "pci" + 4..8 hex digits of domain + ':' + 2 hex digits of bus, as sysfs names a root bus. */
static bool parse_pcie_root(struct span s, struct vg_selector_value *v)
{
	if (s.len < 10 || s.len > 14 || strncasecmp(s.p, "pci", 3) != 0 || s.p[s.len - 3] != ':')
		return false;
	for (size_t i = 3; i < s.len; i++)
		if (i != s.len - 3 && !is_hex(s.p[i]))
			return false;
	for (size_t i = 0; i < s.len; i++)
		v->text[i] = (char)tolower((unsigned char)s.p[i]);
	v->text[s.len] = '\0';
	return true;
}

static int parse_selector_value(enum vg_selector_key key, struct span s, const char *term,
				struct vg_selector_value *v, struct vg_error **err)
{
	const char *name = selector_key_names[key];
	char given[QUOTE_MAX];
	if (s.len == 0)
		return vg_error_set(err, EINVAL, SELECTOR_KEY ": term '%s': empty value for %s", Q(term),
				    name);
	if (!span_copy(s, v->text, sizeof(v->text)))
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": term '%s': value for %s is longer than %zu characters",
				    Q(term), name, sizeof(v->text) - 1);
	quote(v->text, given);
	for (size_t i = 0; i < s.len; i++) {
		char c = s.p[i];
		if ((unsigned char)c < 0x20 || c == 0x7f || strchr(SELECTOR_SPECIALS, c) != NULL)
			return vg_error_set(err, EINVAL,
					    SELECTOR_KEY ": term '%s': value '%s' holds '%c', which "
							 "belongs to the selector grammar; " SELECTOR_FORMS,
					    Q(term), given, isprint((unsigned char)c) ? c : '?');
	}
	v->number = 0;
	switch (key) {
	case VG_SEL_PRODUCT:
		return 0;
	case VG_SEL_VENDOR:
	case VG_SEL_DEVICE:
		if (parse_pci_id(s, v))
			return 0;
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": term '%s': %s '%s' is not a PCI id; expected 4 hex "
						 "digits such as 10de or 0x10de",
				    Q(term), name, given);
	case VG_SEL_NUMA:
		if (parse_decimal(s, -1, 65535, &v->number))
			return 0;
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": term '%s': numa '%s' is not a NUMA node; expected "
						 "an integer from -1 (unknown) to 65535",
				    Q(term), given);
	case VG_SEL_PCIE_ROOT:
		if (parse_pcie_root(s, v))
			return 0;
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": term '%s': pcie-root '%s' is not a PCIe root bus; "
						 "expected pciDDDD:BB such as pci0000:10",
				    Q(term), given);
	}
	return vg_error_set(err, EINVAL, SELECTOR_KEY ": term '%s': unknown key", Q(term));
}

static bool key_char(char c)
{
	return isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.' || c == '/';
}

/* One term, already trimmed and free of top-level commas. */
static int parse_selector_term(struct span s, struct vg_selector_term *t, struct vg_error **err)
{
	char term[VG_SELECTOR_TEXT_MAX];
	span_copy(s, term, sizeof(term)); /* fits: the whole selector did */
	size_t k = 0;
	while (k < s.len && key_char(s.p[k]))
		k++;
	struct span key = { s.p, k };
	struct span rest = span_trim((struct span){ s.p + k, s.len - k });
	struct span value;
	if (rest.len >= 2 && rest.p[0] == '!' && rest.p[1] == '=') {
		t->op = VG_SEL_NE;
		value = span_trim((struct span){ rest.p + 2, rest.len - 2 });
	} else if (rest.len >= 1 && rest.p[0] == '=') {
		t->op = VG_SEL_EQ;
		value = span_trim((struct span){ rest.p + 1, rest.len - 1 });
	} else if (rest.len >= 3 && strncasecmp(rest.p, "in", 2) == 0 &&
		   (is_space(rest.p[2]) || rest.p[2] == '(')) {
		t->op = VG_SEL_IN;
		value = span_trim((struct span){ rest.p + 2, rest.len - 2 });
	} else {
		return vg_error_set(err, EINVAL, SELECTOR_KEY ": malformed term '%s'; " SELECTOR_FORMS,
				    Q(term));
	}
	if (key.len == 0)
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": malformed term '%s': no key before the operator; "
						 "known keys: " SELECTOR_KEYS,
				    Q(term));
	bool known = false;
	for (size_t i = 0; i < VG_ARRAY_SIZE(selector_key_names); i++) {
		if (strlen(selector_key_names[i]) == key.len &&
		    strncasecmp(selector_key_names[i], key.p, key.len) == 0) {
			t->key = (enum vg_selector_key)i;
			known = true;
		}
	}
	if (!known) {
		char name[QUOTE_MAX];
		span_copy((struct span){ key.p, key.len < 64 ? key.len : 64 }, name, sizeof(name));
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": unknown key '%s' in term '%s'; known keys: " SELECTOR_KEYS,
				    name, Q(term));
	}
	t->n_values = 0;
	if (t->op != VG_SEL_IN) {
		if (value.len > 0 && value.p[0] == '(')
			return vg_error_set(err, EINVAL,
					    SELECTOR_KEY ": malformed term '%s': a list in parentheses "
							 "needs 'in', as in %s in (a, b)",
					    Q(term), selector_key_names[t->key]);
		t->n_values = 1;
		return parse_selector_value(t->key, value, term, &t->values[0], err);
	}
	if (value.len < 2 || value.p[0] != '(' || value.p[value.len - 1] != ')')
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": malformed term '%s': 'in' takes a list in "
						 "parentheses, as in %s in (a, b)",
				    Q(term), selector_key_names[t->key]);
	struct span list = { value.p + 1, value.len - 2 };
	if (span_trim(list).len == 0)
		return vg_error_set(err, EINVAL, SELECTOR_KEY ": term '%s': empty list after 'in'",
				    Q(term));
	size_t start = 0;
	for (size_t i = 0; i <= list.len; i++) {
		if (i < list.len && list.p[i] != ',')
			continue;
		if (t->n_values == VG_SELECTOR_MAX_VALUES)
			return vg_error_set(err, EINVAL,
					    SELECTOR_KEY ": term '%s': more than %d values in the list",
					    Q(term), VG_SELECTOR_MAX_VALUES);
		struct span item = span_trim((struct span){ list.p + start, i - start });
		int r = parse_selector_value(t->key, item, term, &t->values[t->n_values], err);
		if (r < 0)
			return r;
		t->n_values++;
		start = i + 1;
	}
	return 0;
}

int vg_selector_parse(const char *text, struct vg_selector *out, struct vg_error **err)
{
	struct span all = span_trim(span_of(text));
	cleanup_free struct vg_selector *sel = calloc(1, sizeof(*sel));
	if (sel == NULL)
		return vg_error_set(err, ENOMEM, SELECTOR_KEY ": out of memory");
	if (all.len == 0)
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": empty selector; expected terms such as "
						 "product=H100,numa=0");
	if (!span_copy(all, sel->text, sizeof(sel->text)))
		return vg_error_set(err, EINVAL, SELECTOR_KEY ": longer than %d characters",
				    VG_SELECTOR_TEXT_MAX - 1);
	/* Commas split terms only outside parentheses; parentheses do not nest. */
	int depth = 0;
	size_t start = 0;
	for (size_t i = 0; i <= all.len; i++) {
		if (i < all.len) {
			char c = all.p[i];
			if (c == '(' && ++depth > 1)
				break;
			if (c == ')' && --depth < 0)
				break;
			if (c != ',' || depth > 0)
				continue;
		} else if (depth != 0) {
			break;
		}
		struct span term = span_trim((struct span){ all.p + start, i - start });
		if (term.len == 0)
			return vg_error_set(err, EINVAL,
					    SELECTOR_KEY ": empty term in '%s' (a stray comma?)",
					    Q(sel->text));
		if (sel->n_terms == VG_SELECTOR_MAX_TERMS)
			return vg_error_set(err, EINVAL, SELECTOR_KEY ": more than %d terms in '%s'",
					    VG_SELECTOR_MAX_TERMS, Q(sel->text));
		int r = parse_selector_term(term, &sel->terms[sel->n_terms], err);
		if (r < 0)
			return r;
		sel->n_terms++;
		start = i + 1;
	}
	if (depth != 0) {
		/* The offending term runs from its start to the next top-level comma or the end. */
		size_t end = start;
		int d = 0;
		while (end < all.len && !(all.p[end] == ',' && d <= 0)) {
			d += all.p[end] == '(' ? 1 : all.p[end] == ')' ? -1 : 0;
			end++;
		}
		char term[VG_SELECTOR_TEXT_MAX];
		span_copy(span_trim((struct span){ all.p + start, end - start }), term, sizeof(term));
		return vg_error_set(err, EINVAL,
				    SELECTOR_KEY ": unbalanced or nested parentheses in term '%s'",
				    Q(term));
	}
	*out = *sel;
	return 0;
}

/* ---- the annotations ---- */

enum key_id {
	K_GPU_COUNT,
	K_GPU,
	K_GPU_DEVICES,
	K_GPU_SELECTOR,
	K_KERNEL,
	K_INITRD,
	K_VCPUS,
	K_MEMORY_MIB,
	K_CMDLINE,
	K_MODULES,
	K_NETWORK,
	K_ARCH,
	K_ACCEL,
	K_COUNT,
};

static const char *const key_names[K_COUNT] = {
	[K_GPU_COUNT] = "gpu-count", [K_GPU] = "gpu",	      [K_GPU_DEVICES] = "gpu-devices",
	[K_GPU_SELECTOR] = "gpu-selector", [K_KERNEL] = "kernel", [K_INITRD] = "initrd",
	[K_VCPUS] = "vcpus",	     [K_MEMORY_MIB] = "memory-mib", [K_CMDLINE] = "cmdline",
	[K_MODULES] = "modules",     [K_NETWORK] = "network", [K_ARCH] = "arch",
	[K_ACCEL] = "accel",
};

#define KNOWN_KEYS                                                                                 \
	"vmgpu.io/gpu-count, vmgpu.io/gpu, vmgpu.io/gpu-devices, vmgpu.io/gpu-selector, "          \
	"vmgpu.io/kernel, vmgpu.io/initrd, vmgpu.io/vcpus, vmgpu.io/memory-mib, "                  \
	"vmgpu.io/cmdline, vmgpu.io/modules, vmgpu.io/network, vmgpu.io/arch, vmgpu.io/accel"

struct parse_state {
	const char *given[K_COUNT]; /* the value of each key seen, NULL when absent */
	unsigned count;
	bool any;
	struct vg_gpu_ref devices[VG_REQ_MAX_GPUS];
	size_t n_devices;
	struct vg_selector selector;
	struct vg_vm_shape vm;
};

static int invalid(struct vg_error **err, enum key_id key, const char *value, const char *expected)
{
	return vg_error_set(err, EINVAL, VG_ANNOTATION_PREFIX "%s: invalid value '%s': expected %s",
			    key_names[key], Q(value), expected);
}

static int parse_gpu_count(const char *value, struct parse_state *st, struct vg_error **err)
{
	long v;
	if (!parse_decimal(span_of(value), 0, VG_REQ_MAX_GPUS, &v))
		return invalid(err, K_GPU_COUNT, value, "an integer from 0 (no GPU) to 16");
	st->count = (unsigned)v;
	return 0;
}

static int parse_gpu(const char *value, struct parse_state *st, struct vg_error **err)
{
	if (strcasecmp(value, "any") != 0)
		return invalid(err, K_GPU, value,
			       "\"any\" (one GPU of any kind); use vmgpu.io/gpu-devices or "
			       "vmgpu.io/gpu-selector to pick GPUs");
	st->any = true;
	return 0;
}

static bool all_digits(struct span s)
{
	if (s.len == 0)
		return false;
	for (size_t i = 0; i < s.len; i++)
		if (!isdigit((unsigned char)s.p[i]))
			return false;
	return true;
}

static int parse_gpu_ref(struct span item, struct vg_gpu_ref *ref, struct vg_error **err)
{
	char text[QUOTE_MAX];
	span_copy((struct span){ item.p, item.len < 64 ? item.len : 64 }, text, sizeof(text));
	if (all_digits(item)) {
		long index;
		if (!parse_decimal(item, 0, 65535, &index))
			return vg_error_set(err, EINVAL,
					    VG_ANNOTATION_PREFIX "gpu-devices: index %s is out of "
								 "range (0 to 65535)",
					    Q(text));
		ref->is_index = true;
		ref->index = (unsigned)index;
		snprintf(ref->text, sizeof(ref->text), "%u", ref->index);
		return 0;
	}
	char bdf[VG_BDF_STRLEN];
	if (!span_copy(item, bdf, sizeof(bdf)) || vg_bdf_parse(bdf, false, &ref->addr, NULL) < 0)
		return vg_error_set(err, EINVAL,
				    VG_ANNOTATION_PREFIX "gpu-devices: '%s' is neither a GPU index nor "
							 "a PCI address (DDDD:BB:DD.F, for example "
							 "0000:3b:00.0)",
				    Q(text));
	ref->is_index = false;
	vg_bdf_format(&ref->addr, ref->text);
	return 0;
}

static int parse_gpu_devices(const char *value, struct parse_state *st, struct vg_error **err)
{
	struct span list = span_of(value);
	if (span_trim(list).len == 0)
		return invalid(err, K_GPU_DEVICES, value,
			       "a comma-separated list of GPU indexes or PCI addresses");
	size_t start = 0;
	for (size_t i = 0; i <= list.len; i++) {
		if (i < list.len && list.p[i] != ',')
			continue;
		struct span item = span_trim((struct span){ list.p + start, i - start });
		start = i + 1;
		if (item.len == 0)
			return vg_error_set(err, EINVAL,
					    VG_ANNOTATION_PREFIX "gpu-devices: empty item in '%s' (a "
								 "stray comma?)",
					    Q(value));
		if (st->n_devices == VG_REQ_MAX_GPUS)
			return vg_error_set(err, EINVAL,
					    VG_ANNOTATION_PREFIX "gpu-devices: more than %d GPUs",
					    VG_REQ_MAX_GPUS);
		struct vg_gpu_ref *ref = &st->devices[st->n_devices];
		int r = parse_gpu_ref(item, ref, err);
		if (r < 0)
			return r;
		for (size_t j = 0; j < st->n_devices; j++)
			if (strcmp(st->devices[j].text, ref->text) == 0)
				return vg_error_set(err, EINVAL,
						    VG_ANNOTATION_PREFIX "gpu-devices: GPU %s is "
									 "listed twice",
						    ref->text);
		st->n_devices++;
	}
	return 0;
}

static int parse_gpu_selector(const char *value, struct parse_state *st, struct vg_error **err)
{
	return vg_selector_parse(value, &st->selector, err);
}

static int parse_path(enum key_id key, const char *value, char *out, size_t size,
		      struct vg_error **err)
{
	if (value[0] != '/')
		return invalid(err, key, value, "an absolute path");
	if (has_control(value))
		return invalid(err, key, value, "a path without control characters");
	if (strlen(value) >= size)
		return vg_error_set(err, EINVAL,
				    VG_ANNOTATION_PREFIX "%s: path is longer than %zu characters",
				    key_names[key], size - 1);
	memcpy(out, value, strlen(value) + 1);
	return 0;
}

static int parse_kernel(const char *value, struct parse_state *st, struct vg_error **err)
{
	st->vm.has_kernel = true;
	return parse_path(K_KERNEL, value, st->vm.kernel, sizeof(st->vm.kernel), err);
}

static int parse_initrd(const char *value, struct parse_state *st, struct vg_error **err)
{
	st->vm.has_initrd = true;
	return parse_path(K_INITRD, value, st->vm.initrd, sizeof(st->vm.initrd), err);
}

static int parse_vcpus(const char *value, struct parse_state *st, struct vg_error **err)
{
	long v;
	if (!parse_decimal(span_of(value), 1, 256, &v))
		return invalid(err, K_VCPUS, value, "an integer from 1 to 256");
	st->vm.has_vcpus = true;
	st->vm.vcpus = (unsigned)v;
	return 0;
}

static int parse_memory_mib(const char *value, struct parse_state *st, struct vg_error **err)
{
	long v;
	if (!parse_decimal(span_of(value), 64, 4194304, &v))
		return invalid(err, K_MEMORY_MIB, value, "an integer from 64 to 4194304 (MiB)");
	st->vm.has_memory_mib = true;
	st->vm.memory_mib = (uint64_t)v;
	return 0;
}

static int parse_cmdline(const char *value, struct parse_state *st, struct vg_error **err)
{
	for (size_t i = 0; value[i] != '\0'; i++)
		if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f)
			return vg_error_set(err, EINVAL,
					    VG_ANNOTATION_PREFIX "cmdline: control character 0x%02x "
								 "at offset %zu; the kernel command "
								 "line is one line",
					    (unsigned char)value[i], i);
	if (strlen(value) >= sizeof(st->vm.cmdline))
		return vg_error_set(err, EINVAL,
				    VG_ANNOTATION_PREFIX "cmdline: %zu characters, more than the "
							 "%zu allowed",
				    strlen(value), sizeof(st->vm.cmdline) - 1);
	memcpy(st->vm.cmdline, value, strlen(value) + 1);
	st->vm.has_cmdline = true;
	return 0;
}

static bool module_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* An empty value is an empty list: load no modules. */
static int parse_modules(const char *value, struct parse_state *st, struct vg_error **err)
{
	struct span list = span_of(value);
	st->vm.has_modules = true;
	if (span_trim(list).len == 0)
		return 0;
	size_t start = 0;
	for (size_t i = 0; i <= list.len; i++) {
		if (i < list.len && list.p[i] != ',')
			continue;
		struct span item = span_trim((struct span){ list.p + start, i - start });
		start = i + 1;
		char name[VG_VM_MODULE_NAME_MAX];
		if (item.len == 0)
			return vg_error_set(err, EINVAL,
					    VG_ANNOTATION_PREFIX "modules: empty item in '%s' (a stray "
								 "comma?)",
					    Q(value));
		bool fits = span_copy(item, name, sizeof(name));
		if (!fits)
			span_copy((struct span){ item.p, sizeof(name) - 1 }, name, sizeof(name));
		for (size_t j = 0; fits && j < item.len; j++)
			fits = module_char(item.p[j]);
		if (!fits)
			return vg_error_set(err, EINVAL,
					    VG_ANNOTATION_PREFIX "modules: '%s' is not a module name; "
								 "expected 1 to %d characters of "
								 "[a-z0-9_-]",
					    Q(name), VG_VM_MODULE_NAME_MAX - 1);
		for (size_t j = 0; j < st->vm.n_modules; j++)
			if (strcmp(st->vm.modules[j], name) == 0)
				return vg_error_set(err, EINVAL,
						    VG_ANNOTATION_PREFIX "modules: '%s' is listed "
									 "twice",
						    name);
		if (st->vm.n_modules == VG_VM_MAX_MODULES)
			return vg_error_set(err, EINVAL,
					    VG_ANNOTATION_PREFIX "modules: more than %d modules",
					    VG_VM_MAX_MODULES);
		memcpy(st->vm.modules[st->vm.n_modules++], name, sizeof(name));
	}
	return 0;
}

static int parse_network(const char *value, struct parse_state *st, struct vg_error **err)
{
	if (strcmp(value, "tap") == 0)
		st->vm.network = VG_VM_NETWORK_TAP;
	else if (strcmp(value, "none") == 0)
		st->vm.network = VG_VM_NETWORK_NONE;
	else
		return invalid(err, K_NETWORK, value, "\"tap\" or \"none\"");
	st->vm.has_network = true;
	return 0;
}

static int parse_arch(const char *value, struct parse_state *st, struct vg_error **err)
{
	if (strcmp(value, "x86_64") == 0)
		st->vm.arch = VG_VM_ARCH_X86_64;
	else if (strcmp(value, "aarch64") == 0)
		st->vm.arch = VG_VM_ARCH_AARCH64;
	else
		return invalid(err, K_ARCH, value, "\"x86_64\" or \"aarch64\"");
	st->vm.has_arch = true;
	return 0;
}

static int parse_accel(const char *value, struct parse_state *st, struct vg_error **err)
{
	if (strcmp(value, "kvm") == 0)
		st->vm.accel = VG_VM_ACCEL_KVM;
	else if (strcmp(value, "tcg") == 0)
		st->vm.accel = VG_VM_ACCEL_TCG;
	else
		return invalid(err, K_ACCEL, value, "\"kvm\" or \"tcg\"");
	st->vm.has_accel = true;
	return 0;
}

typedef int (*value_parser)(const char *value, struct parse_state *st, struct vg_error **err);

static const value_parser parsers[K_COUNT] = {
	[K_GPU_COUNT] = parse_gpu_count,   [K_GPU] = parse_gpu,
	[K_GPU_DEVICES] = parse_gpu_devices, [K_GPU_SELECTOR] = parse_gpu_selector,
	[K_KERNEL] = parse_kernel,	   [K_INITRD] = parse_initrd,
	[K_VCPUS] = parse_vcpus,	   [K_MEMORY_MIB] = parse_memory_mib,
	[K_CMDLINE] = parse_cmdline,	   [K_MODULES] = parse_modules,
	[K_NETWORK] = parse_network,	   [K_ARCH] = parse_arch,
	[K_ACCEL] = parse_accel,
};

static int conflict(struct vg_error **err, enum key_id a, enum key_id b, const char *why)
{
	return vg_error_set(err, EINVAL,
			    VG_ANNOTATION_PREFIX "%s conflicts with " VG_ANNOTATION_PREFIX "%s: %s",
			    key_names[a], key_names[b], why);
}

static int check_conflicts(const struct parse_state *st, struct vg_error **err)
{
	const char *const *given = st->given;
	if (given[K_GPU] && given[K_GPU_DEVICES])
		return conflict(err, K_GPU, K_GPU_DEVICES,
				"ask for any GPU or name the GPUs, not both");
	if (given[K_GPU] && given[K_GPU_SELECTOR])
		return conflict(err, K_GPU, K_GPU_SELECTOR,
				"ask for any GPU or select GPUs by attribute, not both");
	if (given[K_GPU_DEVICES] && given[K_GPU_SELECTOR])
		return conflict(err, K_GPU_DEVICES, K_GPU_SELECTOR,
				"name the GPUs or select them by attribute, not both");
	if (given[K_GPU_COUNT] && given[K_GPU] && st->count != 1)
		return vg_error_set(err, EINVAL,
				    VG_ANNOTATION_PREFIX "gpu-count conflicts with " VG_ANNOTATION_PREFIX
				    "gpu: the count is %u but vmgpu.io/gpu=any asks for exactly one GPU",
				    st->count);
	if (given[K_GPU_COUNT] && given[K_GPU_DEVICES] && st->count != st->n_devices)
		return vg_error_set(err, EINVAL,
				    VG_ANNOTATION_PREFIX "gpu-count conflicts with " VG_ANNOTATION_PREFIX
				    "gpu-devices: the count is %u but the list names %zu GPU%s",
				    st->count, st->n_devices, st->n_devices == 1 ? "" : "s");
	if (given[K_GPU_COUNT] && given[K_GPU_SELECTOR] && st->count == 0)
		return vg_error_set(err, EINVAL,
				    VG_ANNOTATION_PREFIX "gpu-count conflicts with " VG_ANNOTATION_PREFIX
				    "gpu-selector: the count is 0 but a selector asks for at least "
				    "one GPU");
	return 0;
}

static void build_gpu_request(const struct parse_state *st, struct vg_gpu_request *req)
{
	memset(req, 0, sizeof(*req));
	if (st->given[K_GPU_DEVICES]) {
		req->kind = VG_REQ_DEVICES;
		memcpy(req->devices, st->devices, sizeof(req->devices));
		req->n_devices = st->n_devices;
		req->count = (unsigned)st->n_devices;
	} else if (st->given[K_GPU_SELECTOR]) {
		req->kind = VG_REQ_SELECTOR;
		req->selector = st->selector;
		req->count = st->given[K_GPU_COUNT] ? st->count : 1;
	} else if (st->any) {
		req->kind = VG_REQ_COUNT;
		req->any = true;
		req->count = 1;
	} else if (st->given[K_GPU_COUNT] && st->count > 0) {
		req->kind = VG_REQ_COUNT;
		req->count = st->count;
	} else {
		req->kind = VG_REQ_NONE;
	}
}

int vg_sandbox_request_parse(const struct vg_kv *annotations, size_t n, struct vg_gpu_request *gpu,
			     struct vg_vm_shape *vm, struct vg_error **err)
{
	static const size_t prefix_len = sizeof(VG_ANNOTATION_PREFIX) - 1;
	cleanup_free struct parse_state *st = calloc(1, sizeof(*st));
	if (st == NULL)
		return vg_error_set(err, ENOMEM, "parsing the sandbox annotations: out of memory");
	st->vm.network = VG_VM_NETWORK_TAP;
	for (size_t i = 0; i < n; i++) {
		const char *key = annotations[i].key;
		const char *value = annotations[i].value ? annotations[i].value : "";
		/* The prefix is matched in any case so that VMGPU.IO/gpu is refused, not ignored. */
		if (key == NULL || strncasecmp(key, VG_ANNOTATION_PREFIX, prefix_len) != 0)
			continue;
		enum key_id id = K_COUNT;
		if (strncmp(key, VG_ANNOTATION_PREFIX, prefix_len) == 0)
			for (size_t k = 0; k < K_COUNT; k++)
				if (strcmp(key + prefix_len, key_names[k]) == 0)
					id = (enum key_id)k;
		if (id == K_COUNT)
			return vg_error_set(err, EINVAL, "unknown annotation %s; known: " KNOWN_KEYS,
					    Q(key));
		if (st->given[id] != NULL)
			return vg_error_set(err, EINVAL, "annotation %s is given twice", key);
		st->given[id] = value;
		int r = parsers[id](value, st, err);
		if (r < 0)
			return r;
	}
	int r = check_conflicts(st, err);
	if (r < 0)
		return r;
	build_gpu_request(st, gpu);
	*vm = st->vm;
	return 0;
}

#include "shim/qemu_argv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/bdf.h"
#include "lib/cleanup.h"
#include "lib/argv.h"
#include "lib/error.h"

#define VCPUS_MAX 256u
#define MEMORY_MIB_MIN 64u
#define MEMORY_MIB_MAX (1u << 22)
/* Linux's COMMAND_LINE_SIZE on x86 and arm64, NUL included. */
#define GUEST_CMDLINE_MAX 2048
/* Room for a path in which every byte is a comma. */
#define ESCAPED_PATH_MAX (2 * PATH_MAX)
#define GIB (1ull << 30)
/* Far above any real card; keeps the MMIO window arithmetic away from overflow. */
#define GPU_BAR_BYTES_MAX (1ull << 50)
#define Q35_HOLE64_MIN (32 * GIB)
/* QEMU 7.2's virt machine has one fixed 512G high PCIe MMIO window (at 512G, with highmem=on)
 * and no highmem-mmio-size property yet, so larger BARs cannot be placed at all. */
#define VIRT_HIGH_MMIO_BYTES (512 * GIB)
#define LOWER_AND_DIGITS "abcdefghijklmnopqrstuvwxyz0123456789"
#define UPPER "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

/* Fixed slots on pcie.0, one root port each, so a device keeps its guest address whether or not
 * the others are present. The slot number is also the root port's chassis and slot number. */
#define SLOT_READY 1u
#define SLOT_NET 2u
#define SLOT_FIRST_GPU 3u

struct gpu_plan {
	char bdf[VG_BDF_STRLEN];
	char companion_bdf[VG_SPEC_MAX_COMPANIONS][VG_BDF_STRLEN];
	uint8_t companion_function[VG_SPEC_MAX_COMPANIONS];
};

/* Everything checked and escaped up front, so emitting the argv can only run out of memory. */
struct qemu_plan {
	char name[2 * VG_SANDBOX_ID_MAX + 1];
	char qmp_socket[ESCAPED_PATH_MAX];
	char ready_socket[ESCAPED_PATH_MAX];
	char console_log[ESCAPED_PATH_MAX];
	char cmdline[GUEST_CMDLINE_MAX];
	char mac[sizeof("52:54:00:00:00:00")];
	bool network;
	uint64_t pci_hole64_bytes;
	struct gpu_plan gpus[VG_SPEC_MAX_GPUS];
};

static bool is_control(char c)
{
	return (unsigned char)c < 0x20 || c == 0x7f;
}

int vg_qemu_escape_value(const char *value, char *out, size_t size, struct vg_error **err)
{
	if (value == NULL)
		return vg_error_set(err, EINVAL, "missing value");
	if (size == 0)
		return vg_error_set(err, ENAMETOOLONG, "no room for the escaped value");
	size_t n = 0;
	for (size_t i = 0; value[i] != '\0'; i++) {
		if (is_control(value[i]))
			return vg_error_set(err, EINVAL,
					    "contains the control character 0x%02x at offset %zu",
					    (unsigned)(unsigned char)value[i], i);
		if (n + (value[i] == ',' ? 2 : 1) >= size)
			return vg_error_set(err, ENAMETOOLONG,
					    "is too long once its commas are doubled");
		out[n++] = value[i];
		if (value[i] == ',')
			out[n++] = ',';
	}
	out[n] = '\0';
	return 0;
}

/* A fixed-size string field: NUL-terminated inside its buffer, no control characters. */
static int check_text(const char *field, const char *text, size_t size, bool required,
		      struct vg_error **err)
{
	size_t len = strnlen(text, size);
	if (len == size)
		return vg_error_set(err, EINVAL, "%s: not terminated within its %zu bytes", field,
				    size);
	if (required && len == 0)
		return vg_error_set(err, EINVAL, "%s: missing", field);
	for (size_t i = 0; i < len; i++)
		if (is_control(text[i]))
			return vg_error_set(err, EINVAL,
					    "%s: contains the control character 0x%02x at offset "
					    "%zu",
					    field, (unsigned)(unsigned char)text[i], i);
	return 0;
}

static int escape_field(const char *field, const char *value, char *out, size_t size,
			struct vg_error **err)
{
	int r = vg_qemu_escape_value(value, out, size, err);
	if (r < 0)
		vg_error_prefix(err, "%s", field);
	return r;
}

/* The spec's rule, checked again: the id lands in option values and on the kernel command line,
 * and nothing here may depend on who validated it before. */
static int check_sandbox_id(const char *id, struct vg_error **err)
{
	size_t len = strnlen(id, VG_SANDBOX_ID_MAX + 1);
	if (len < 1 || len > 63 || id[0] == '-' || strspn(id, LOWER_AND_DIGITS "-") != len)
		return vg_error_set(err, EINVAL,
				    "id: '%.64s' is not a sandbox id: [a-z0-9][a-z0-9-]{0,62}", id);
	return 0;
}

static int check_paths(const struct vg_sandbox_paths *paths, struct qemu_plan *plan,
		       struct vg_error **err)
{
	const struct {
		const char *field;
		const char *path;
		size_t size; /* the socket paths' arrays are sized to fit sun_path */
		char *escaped; /* NULL: QEMU takes this one verbatim */
	} checks[] = {
		{ "qmp_socket", paths->qmp_socket, sizeof(paths->qmp_socket), plan->qmp_socket },
		{ "ready_socket", paths->ready_socket, sizeof(paths->ready_socket),
		  plan->ready_socket },
		{ "console_log", paths->console_log, sizeof(paths->console_log),
		  plan->console_log },
		{ "qemu_pidfile", paths->qemu_pidfile, sizeof(paths->qemu_pidfile), NULL },
	};
	int r;
	for (size_t i = 0; i < VG_ARRAY_SIZE(checks); i++) {
		const char *field = checks[i].field, *path = checks[i].path;
		if ((r = check_text(field, path, checks[i].size, true, err)) < 0)
			return r;
		if (checks[i].escaped != NULL &&
		    (r = escape_field(field, path, checks[i].escaped, ESCAPED_PATH_MAX, err)) < 0)
			return r;
	}
	return 0;
}

static int check_machine(const struct vg_sandbox_spec *spec, struct vg_error **err)
{
	if (spec->arch != VG_ARCH_X86_64 && spec->arch != VG_ARCH_AARCH64)
		return vg_error_set(err, EINVAL, "arch: unknown architecture %d", (int)spec->arch);
	if (spec->accel != VG_ACCEL_KVM && spec->accel != VG_ACCEL_TCG)
		return vg_error_set(err, EINVAL, "accel: unknown accelerator %d", (int)spec->accel);
	if (spec->arch == VG_ARCH_AARCH64 && spec->gic_version != 0 && spec->gic_version != 3)
		return vg_error_set(err, EINVAL, "gic_version: %d is not 3, nor 0 for the host's",
				    spec->gic_version);
	if (spec->arch == VG_ARCH_AARCH64 && spec->gic_version == 0 && spec->accel != VG_ACCEL_KVM)
		return vg_error_set(err, EINVAL, "gic_version: 0 (host) needs KVM; TCG takes 3");
	if (spec->vcpus < 1 || spec->vcpus > VCPUS_MAX)
		return vg_error_set(err, EINVAL, "vcpus: %u is out of range 1..%u", spec->vcpus,
				    VCPUS_MAX);
	if (spec->memory_mib < MEMORY_MIB_MIN || spec->memory_mib > MEMORY_MIB_MAX)
		return vg_error_set(err, EINVAL, "memory_mib: %llu is out of range %u..%u",
				    (unsigned long long)spec->memory_mib, MEMORY_MIB_MIN,
				    MEMORY_MIB_MAX);
	if (spec->hugepages && spec->memory_mib % 2 != 0)
		return vg_error_set(err, EINVAL,
				    "memory_mib: %llu is not a whole number of 2M huge pages",
				    (unsigned long long)spec->memory_mib);
	int r;
	if ((r = check_text("qemu_binary", spec->qemu_binary, sizeof(spec->qemu_binary), false,
			    err)) < 0 ||
	    (r = check_text("kernel", spec->kernel, sizeof(spec->kernel), true, err)) < 0 ||
	    (r = check_text("initrd", spec->initrd, sizeof(spec->initrd), false, err)) < 0)
		return r;
	return 0;
}

/* The struct may hold anything; only a value that survives a round trip through the strict
 * parser is a PCI address. */
static int format_checked_bdf(const char *field, const struct vg_bdf *addr,
			      char out[VG_BDF_STRLEN], struct vg_error **err)
{
	struct vg_bdf parsed;
	vg_bdf_format(addr, out);
	if (vg_bdf_parse(out, false, &parsed, NULL) < 0 || vg_bdf_compare(&parsed, addr) != 0)
		return vg_error_set(err, EINVAL, "%s: %s is not a PCI address", field, out);
	return 0;
}

/* The GPU takes guest function 0. When it is function 0 on the host too, companions in its host
 * slot keep their functions, so the guest sees the card as the host does; any other companion
 * takes the lowest free function. */
static int plan_companion_functions(size_t index, const struct vg_spec_gpu *gpu,
				    const struct vg_bdf *gpu_addr, struct gpu_plan *plan,
				    struct vg_error **err)
{
	unsigned used = 1u;
	bool placed[VG_SPEC_MAX_COMPANIONS] = { false };
	for (size_t k = 0; k < gpu->n_companions && gpu_addr->function == 0; k++) {
		const struct vg_bdf *c = &gpu->companions[k];
		if (!vg_bdf_same_slot(c, gpu_addr))
			continue;
		if (used & (1u << c->function))
			return vg_error_set(err, EINVAL,
					    "gpus[%zu].companions[%zu]: %s is listed twice", index,
					    k, plan->companion_bdf[k]);
		used |= 1u << c->function;
		plan->companion_function[k] = c->function;
		placed[k] = true;
	}
	for (size_t k = 0; k < gpu->n_companions; k++) {
		if (placed[k])
			continue;
		uint8_t fn = 1;
		while (used & (1u << fn))
			fn++;
		used |= 1u << fn;
		plan->companion_function[k] = fn;
	}
	return 0;
}

static int plan_gpu(size_t index, const struct vg_spec_gpu *gpu, struct gpu_plan *plan,
		    struct vg_error **err)
{
	static const struct vg_bdf unset;
	char field[64];
	struct vg_bdf addr;
	int r;
	/* The string is what the spec file says; addr, when set, must agree with it. */
	snprintf(field, sizeof(field), "gpus[%zu].bdf", index);
	if ((r = check_text(field, gpu->bdf, sizeof(gpu->bdf), true, err)) < 0)
		return r;
	if ((r = vg_bdf_parse(gpu->bdf, false, &addr, err)) < 0)
		return vg_error_prefix(err, "%s", field);
	if (vg_bdf_compare(&gpu->addr, &unset) != 0 && vg_bdf_compare(&gpu->addr, &addr) != 0)
		return vg_error_set(err, EINVAL, "%s: '%s' and gpus[%zu].addr disagree", field,
				    gpu->bdf, index);
	vg_bdf_format(&addr, plan->bdf);
	if (gpu->vendor_id == 0 || gpu->vendor_id == 0xffff)
		return vg_error_set(err, EINVAL, "gpus[%zu].vendor_id: 0x%04x is not a PCI vendor",
				    index, gpu->vendor_id);
	if (gpu->bar_bytes > GPU_BAR_BYTES_MAX)
		return vg_error_set(err, EINVAL, "gpus[%zu].bar_bytes: %llu is implausibly large",
				    index, (unsigned long long)gpu->bar_bytes);
	if (gpu->n_companions > VG_SPEC_MAX_COMPANIONS)
		return vg_error_set(err, EINVAL, "gpus[%zu]: %zu companions, at most %d", index,
				    gpu->n_companions, VG_SPEC_MAX_COMPANIONS);
	for (size_t k = 0; k < gpu->n_companions; k++) {
		snprintf(field, sizeof(field), "gpus[%zu].companions[%zu]", index, k);
		if ((r = format_checked_bdf(field, &gpu->companions[k], plan->companion_bdf[k],
					    err)) < 0)
			return r;
		if (vg_bdf_compare(&gpu->companions[k], &addr) == 0)
			return vg_error_set(err, EINVAL, "%s: %s is the GPU itself", field,
					    plan->bdf);
	}
	return plan_companion_functions(index, gpu, &addr, plan, err);
}

/* A function assigned twice makes QEMU fail late, with a message about a busy host device that
 * hides the real mistake. */
static int check_functions_unique(const struct vg_sandbox_spec *spec, const struct qemu_plan *plan,
				  struct vg_error **err)
{
	const char *seen[VG_SPEC_MAX_GPUS * (VG_SPEC_MAX_COMPANIONS + 1)];
	size_t n = 0;
	for (size_t i = 0; i < spec->n_gpus; i++) {
		seen[n++] = plan->gpus[i].bdf;
		for (size_t k = 0; k < spec->gpus[i].n_companions; k++)
			seen[n++] = plan->gpus[i].companion_bdf[k];
	}
	for (size_t a = 0; a < n; a++)
		for (size_t b = a + 1; b < n; b++)
			if (strcmp(seen[a], seen[b]) == 0)
				return vg_error_set(err, EINVAL,
						    "gpus: %s is assigned more than once", seen[a]);
	return 0;
}

static int plan_gpus(const struct vg_sandbox_spec *spec, struct qemu_plan *plan,
		     struct vg_error **err)
{
	if (spec->n_gpus > VG_SPEC_MAX_GPUS)
		return vg_error_set(err, EINVAL, "gpus: %zu GPUs, at most %d", spec->n_gpus,
				    VG_SPEC_MAX_GPUS);
	uint64_t bar_total = 0;
	int r;
	for (size_t i = 0; i < spec->n_gpus; i++) {
		if ((r = plan_gpu(i, &spec->gpus[i], &plan->gpus[i], err)) < 0)
			return r;
		bar_total += spec->gpus[i].bar_bytes;
	}
	if ((r = check_functions_unique(spec, plan, err)) < 0)
		return r;
	if (spec->n_gpus > 0 && spec->arch == VG_ARCH_X86_64) {
		/* Twice the BARs leaves room for the gaps that aligning big BARs leaves. */
		uint64_t wanted = bar_total * 2 > Q35_HOLE64_MIN ? bar_total * 2 : Q35_HOLE64_MIN;
		plan->pci_hole64_bytes = Q35_HOLE64_MIN;
		while (plan->pci_hole64_bytes < wanted)
			plan->pci_hole64_bytes <<= 1;
	}
	if (spec->arch == VG_ARCH_AARCH64 && bar_total > VIRT_HIGH_MMIO_BYTES)
		return vg_error_set(err, EINVAL,
				    "gpus: their BARs need %llu GiB, more than the 512 GiB of PCI "
				    "MMIO that QEMU 7.2's virt machine has",
				    (unsigned long long)((bar_total + GIB - 1) / GIB));
	return 0;
}

static int plan_network(const struct vg_sandbox_spec *spec, const struct vg_qemu_fds *fds,
			struct qemu_plan *plan, struct vg_error **err)
{
	int tap_fd = fds != NULL ? fds->tap_fd : -1;
	const struct vg_spec_network *net = &spec->network;
	if (!net->enabled && tap_fd >= 0)
		return vg_error_set(err, EINVAL, "tap_fd: %d passed for a sandbox without network",
				    tap_fd);
	if (!net->enabled)
		return 0;
	if (tap_fd < 0)
		return vg_error_set(err, EINVAL, "tap_fd: the network is on but no TAP fd came");
	if (net->prefix_len < 1 || net->prefix_len > 30)
		return vg_error_set(err, EINVAL, "network.prefix_len: %d is out of range 1..30",
				    net->prefix_len);
	uint32_t mask = ~0u << (32 - net->prefix_len);
	if (net->guest_addr == 0 || net->host_addr == 0 || net->guest_addr == net->host_addr ||
	    (net->guest_addr & mask) != (net->host_addr & mask))
		return vg_error_set(err, EINVAL,
				    "network: the guest and host addresses must differ and share "
				    "the /%d prefix",
				    net->prefix_len);
	/* FNV-1a over the id: a sandbox keeps its MAC across restarts, so the guest's view of its
	 * NIC does not change under it. */
	uint32_t hash = 2166136261u;
	for (const char *p = spec->id; *p != '\0'; p++)
		hash = (hash ^ (unsigned char)*p) * 16777619u;
	snprintf(plan->mac, sizeof(plan->mac), "52:54:00:%02x:%02x:%02x", (hash >> 16) & 0xff,
		 (hash >> 8) & 0xff, hash & 0xff);
	plan->network = true;
	return 0;
}

static void format_ipv4(uint32_t host_order, char out[INET_ADDRSTRLEN])
{
	struct in_addr addr = { .s_addr = htonl(host_order) };
	if (inet_ntop(AF_INET, &addr, out, INET_ADDRSTRLEN) == NULL)
		out[0] = '\0';
}

static int plan_cmdline(const struct vg_sandbox_spec *spec, struct qemu_plan *plan,
			struct vg_error **err)
{
	if (spec->n_modules > VG_SPEC_MAX_MODULES)
		return vg_error_set(err, EINVAL, "modules: %zu modules, at most %d",
				    spec->n_modules, VG_SPEC_MAX_MODULES);
	for (size_t i = 0; i < spec->n_modules; i++) {
		const char *name = spec->modules[i];
		size_t len = strnlen(name, sizeof(spec->modules[i]));
		if (len == 0 || len == sizeof(spec->modules[i]) ||
		    strspn(name, LOWER_AND_DIGITS UPPER "_-") != len)
			return vg_error_set(err, EINVAL,
					    "modules[%zu]: '%.63s' is not a module name; expected "
					    "[A-Za-z0-9_-]",
					    i, name);
	}
	int r = check_text("cmdline_extra", spec->cmdline_extra, sizeof(spec->cmdline_extra),
			   false, err);
	if (r < 0)
		return r;

	char *line = NULL;
	size_t len = 0;
	cleanup_fclose FILE *stream = open_memstream(&line, &len);
	if (stream == NULL)
		return vg_error_set_errno(err, errno, "kernel command line");
	/* virt's default serial is a PL011. */
	fprintf(stream, "console=%s panic=-1 vmgpu.id=%s",
		spec->arch == VG_ARCH_X86_64 ? "ttyS0" : "ttyAMA0", spec->id);
	if (plan->network) {
		char guest[INET_ADDRSTRLEN], host[INET_ADDRSTRLEN];
		format_ipv4(spec->network.guest_addr, guest);
		format_ipv4(spec->network.host_addr, host);
		fprintf(stream, " vmgpu.ip=%s/%d,%s", guest, spec->network.prefix_len, host);
	}
	for (size_t i = 0; i < spec->n_modules; i++)
		fprintf(stream, "%s%s", i == 0 ? " vmgpu.modules=" : ",", spec->modules[i]);
	for (size_t i = 0; i < spec->n_gpus; i++)
		fprintf(stream, "%s%04x:%04x", i == 0 ? " vmgpu.gpus=" : ",",
			spec->gpus[i].vendor_id, spec->gpus[i].device_id);
	if (spec->cmdline_extra[0] != '\0')
		fprintf(stream, " %s", spec->cmdline_extra);
	bool failed = ferror(stream) != 0;
	int closed = fclose(TAKE_PTR(stream));
	cleanup_free char *owned = line;
	if (failed || closed != 0)
		return vg_error_set(err, ENOMEM, "out of memory building the kernel command line");
	if (len >= sizeof(plan->cmdline))
		return vg_error_set(err, EINVAL,
				    "cmdline_extra: the kernel command line would be %zu bytes, "
				    "more than the guest kernel's %zu",
				    len, sizeof(plan->cmdline) - 1);
	memcpy(plan->cmdline, owned, len + 1);
	return 0;
}

static int plan_qemu(const struct vg_sandbox_spec *spec, const struct vg_sandbox_paths *paths,
		     const struct vg_qemu_fds *fds, struct qemu_plan *plan, struct vg_error **err)
{
	int r;
	if ((r = check_sandbox_id(spec->id, err)) < 0 ||
	    (r = escape_field("id", spec->id, plan->name, sizeof(plan->name), err)) < 0 ||
	    (r = check_machine(spec, err)) < 0 || (r = check_paths(paths, plan, err)) < 0 ||
	    (r = plan_gpus(spec, plan, err)) < 0 || (r = plan_network(spec, fds, plan, err)) < 0 ||
	    (r = plan_cmdline(spec, plan, err)) < 0)
		return r;
	return 0;
}

/* Emission keeps the first failure and skips the rest, so the layout below reads as a list. */
struct emitter {
	struct vg_argv *argv;
	struct vg_error **err;
	int ret;
};

static void emit_flag(struct emitter *e, const char *flag)
{
	if (e->ret >= 0)
		e->ret = vg_argv_take(e->argv, strdup(flag), e->err);
}

/* An option and its formatted value. */
static void emit(struct emitter *e, const char *flag, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void emit(struct emitter *e, const char *flag, const char *fmt, ...)
{
	emit_flag(e, flag);
	if (e->ret < 0)
		return;
	char *value = NULL;
	va_list ap;
	va_start(ap, fmt);
	if (vasprintf(&value, fmt, ap) < 0)
		value = NULL;
	va_end(ap);
	e->ret = vg_argv_take(e->argv, value, e->err);
}

static void emit_root_port(struct emitter *e, const char *id, unsigned slot)
{
	emit(e, "-device", "pcie-root-port,id=%s,chassis=%u,slot=%u,bus=pcie.0,addr=%02x.0", id,
	     slot, slot, slot);
}

static void emit_process(struct emitter *e, const struct vg_sandbox_spec *spec,
			 const struct vg_sandbox_paths *paths, const struct qemu_plan *plan)
{
	const char *binary = spec->arch == VG_ARCH_X86_64 ? "qemu-system-x86_64" :
							    "qemu-system-aarch64";
	emit_flag(e, spec->qemu_binary[0] != '\0' ? spec->qemu_binary : binary);
	emit(e, "-name", "guest=%s,debug-threads=on", plan->name);
	emit_flag(e, "-nodefaults");
	emit_flag(e, "-no-user-config");
	/* Without it QEMU opens a VNC server on aarch64. */
	emit(e, "-display", "none");
	/* q35 adds no VGA under -nodefaults; saying so guards against a changed default. */
	if (spec->arch == VG_ARCH_X86_64)
		emit(e, "-vga", "none");
	/* libvirt's set: QEMU never needs to regain privileges, fork helpers or renice itself; the
	 * shim hands it every fd it needs. */
	emit(e, "-sandbox",
	     "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
	/* -pidfile, -kernel, -initrd and -append take their values verbatim: no comma doubling. */
	emit(e, "-pidfile", "%s", paths->qemu_pidfile);
	/* A guest reboot ends QEMU, which the shim treats as an exit. */
	emit_flag(e, "-no-reboot");
}

static void emit_machine(struct emitter *e, const struct vg_sandbox_spec *spec,
			 const struct qemu_plan *plan)
{
	bool kvm = spec->accel == VG_ACCEL_KVM;
	if (spec->arch == VG_ARCH_X86_64)
		emit(e, "-machine", "q35,memory-backend=ram0");
	else
		emit(e, "-machine", "virt,gic-version=%s,highmem=on,memory-backend=ram0",
		     spec->gic_version == 0 ? "host" : "3");
	emit(e, "-accel", "%s", kvm ? "kvm" : "tcg,thread=multi");
	/* TCG emulating aarch64's architected QARMA pointer auth about doubles the boot time. */
	emit(e, "-cpu", "%s",
	     kvm ? "host" : spec->arch == VG_ARCH_AARCH64 ? "max,pauth-impdef=on" : "max");
	emit(e, "-smp", "%u", spec->vcpus);
	emit(e, "-m", "%lluM", (unsigned long long)spec->memory_mib);
	/* memfd gives huge pages without a mounted hugetlbfs; share=on lets another process (a
	 * vhost-user backend, a debugger) map guest RAM. 2M is the x86 and 4K-granule arm64 huge
	 * page; a 64K-page arm64 host would want 512M, which the spec cannot say yet. */
	emit(e, "-object", "memory-backend-memfd,id=ram0,size=%lluM,share=on%s%s",
	     (unsigned long long)spec->memory_mib,
	     spec->hugepages ? ",hugetlb=on,hugetlbsize=2M" : "",
	     spec->prealloc ? ",prealloc=on" : "");
	if (plan->pci_hole64_bytes != 0)
		emit(e, "-global", "q35-pcihost.pci-hole64-size=%lluG",
		     (unsigned long long)(plan->pci_hole64_bytes / GIB));
}

static void emit_boot(struct emitter *e, const struct vg_sandbox_spec *spec,
		      const struct qemu_plan *plan)
{
	emit(e, "-kernel", "%s", spec->kernel);
	if (spec->initrd[0] != '\0')
		emit(e, "-initrd", "%s", spec->initrd);
	emit(e, "-append", "%s", plan->cmdline);
}

static void emit_channels(struct emitter *e, const struct qemu_plan *plan)
{
	emit(e, "-qmp", "unix:%s,server=on,wait=off", plan->qmp_socket);
	/* Not "-serial file:PATH": QEMU takes that path verbatim, so it would need escaping rules
	 * of its own. */
	emit(e, "-chardev", "file,id=console0,path=%s", plan->console_log);
	emit(e, "-serial", "chardev:console0");
	emit_root_port(e, "rp-vser", SLOT_READY);
	emit(e, "-device", "virtio-serial-pci,id=vser0,bus=rp-vser,addr=00.0");
	emit(e, "-chardev", "socket,id=ready0,path=%s,server=on,wait=off", plan->ready_socket);
	emit(e, "-device", "virtserialport,bus=vser0.0,chardev=ready0,name=io.vmgpu.ready");
}

static void emit_network(struct emitter *e, const struct vg_qemu_fds *fds,
			 const struct qemu_plan *plan)
{
	if (!plan->network)
		return;
	emit(e, "-netdev", "tap,id=net0,fd=%d", fds->tap_fd);
	emit_root_port(e, "rp-net", SLOT_NET);
	/* An empty romfile: no iPXE ROM (efi-virtio.rom) to install, and direct kernel boot never
	 * runs it anyway. */
	emit(e, "-device",
	     "virtio-net-pci,id=nic0,netdev=net0,mac=%s,bus=rp-net,addr=00.0,romfile=", plan->mac);
}

static void emit_gpus(struct emitter *e, const struct vg_sandbox_spec *spec,
		      const struct qemu_plan *plan)
{
	for (size_t i = 0; i < spec->n_gpus; i++) {
		const struct gpu_plan *gpu = &plan->gpus[i];
		size_t n_companions = spec->gpus[i].n_companions;
		char port[sizeof("rp") + 20];
		snprintf(port, sizeof(port), "rp%zu", i);
		emit_root_port(e, port, SLOT_FIRST_GPU + (unsigned)i);
		emit(e, "-device", "vfio-pci,host=%s,id=gpu%zu,bus=%s,addr=00.0%s", gpu->bdf, i,
		     port, n_companions > 0 ? ",multifunction=on" : "");
		for (size_t k = 0; k < n_companions; k++) {
			unsigned fn = gpu->companion_function[k];
			emit(e, "-device", "vfio-pci,host=%s,id=gpu%zu_f%u,bus=%s,addr=00.%u",
			     gpu->companion_bdf[k], i, fn, port, fn);
		}
	}
}

int vg_qemu_build_argv(const struct vg_sandbox_spec *spec, const struct vg_sandbox_paths *paths,
		       const struct vg_qemu_fds *fds, struct vg_argv *out, struct vg_error **err)
{
	if (spec == NULL || paths == NULL || out == NULL)
		return vg_error_set(err, EINVAL, "missing spec, paths or output argv");
	cleanup_free struct qemu_plan *plan = calloc(1, sizeof(*plan));
	if (plan == NULL)
		return vg_error_set(err, ENOMEM, "out of memory building the QEMU argv");
	int r = plan_qemu(spec, paths, fds, plan, err);
	if (r < 0)
		return r;

	cleanup_argv struct vg_argv argv = { 0 };
	struct emitter e = { .argv = &argv, .err = err, .ret = 0 };
	emit_process(&e, spec, paths, plan);
	emit_machine(&e, spec, plan);
	emit_boot(&e, spec, plan);
	emit_channels(&e, plan);
	emit_network(&e, fds, plan);
	emit_gpus(&e, spec, plan);
	if (e.ret < 0)
		return e.ret;
	*out = argv;
	argv = (struct vg_argv){ 0 };
	return 0;
}

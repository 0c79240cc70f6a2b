#include "shim/spec.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/error.h"

bool vg_sandbox_id_is_valid(const char *id)
{
	size_t len = strlen(id);
	if (len == 0 || len > VG_SANDBOX_ID_MAX || !(islower((unsigned char)id[0]) ||
						      isdigit((unsigned char)id[0])))
		return false;
	for (size_t i = 0; i < len; i++)
		if (!islower((unsigned char)id[i]) && !isdigit((unsigned char)id[i]) && id[i] != '-')
			return false;
	return true;
}

enum vg_arch vg_arch_host(void)
{
	struct utsname uts;
	if (uname(&uts) == 0 && strcmp(uts.machine, "aarch64") == 0)
		return VG_ARCH_AARCH64;
	return VG_ARCH_X86_64;
}

const char *vg_arch_name(enum vg_arch arch)
{
	return arch == VG_ARCH_AARCH64 ? "aarch64" : "x86_64";
}

struct spec_reader {
	json_object *obj;
	const char *where;
	struct vg_error **err;
};

static int bad(struct spec_reader *r, const char *key, const char *what)
{
	return vg_error_set(r->err, EINVAL, "spec%s.%s: %s", r->where, key, what);
}

static int check_keys(struct spec_reader *r, const char *const *allowed)
{
	json_object_object_foreach(r->obj, key, value)
	{
		(void)value;
		bool known = false;
		for (size_t i = 0; allowed[i] != NULL && !known; i++)
			known = strcmp(allowed[i], key) == 0;
		if (!known)
			return bad(r, key, "unknown key");
	}
	return 0;
}

static int read_string(struct spec_reader *r, const char *key, char *out, size_t size,
		       bool required)
{
	json_object *v;
	if (!json_object_object_get_ex(r->obj, key, &v)) {
		if (required)
			return bad(r, key, "is required");
		return 0;
	}
	if (!json_object_is_type(v, json_type_string))
		return bad(r, key, "must be a string");
	const char *s = json_object_get_string(v);
	if (strlen(s) >= size)
		return bad(r, key, "is too long");
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p < 0x20)
			return bad(r, key, "must not contain control characters");
	strcpy(out, s);
	return 0;
}

static int read_uint(struct spec_reader *r, const char *key, uint64_t min, uint64_t max,
		     uint64_t *out)
{
	json_object *v;
	if (!json_object_object_get_ex(r->obj, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_int))
		return bad(r, key, "must be an integer");
	int64_t n = json_object_get_int64(v);
	if (n < 0 || (uint64_t)n < min || (uint64_t)n > max) {
		char msg[96];
		snprintf(msg, sizeof(msg), "must be between %llu and %llu", (unsigned long long)min,
			 (unsigned long long)max);
		return bad(r, key, msg);
	}
	*out = (uint64_t)n;
	return 0;
}

static int read_bool(struct spec_reader *r, const char *key, bool *out)
{
	json_object *v;
	if (!json_object_object_get_ex(r->obj, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return bad(r, key, "must be true or false");
	*out = json_object_get_boolean(v);
	return 0;
}

static int read_hex16(struct spec_reader *r, const char *key, uint16_t *out)
{
	char text[16] = "";
	int ret = read_string(r, key, text, sizeof(text), true);
	if (ret < 0)
		return ret;
	char *end = NULL;
	unsigned long v = strtoul(text, &end, 16);
	if (end == text || *end != '\0' || v > 0xffff)
		return bad(r, key, "must be a 16-bit hex id like 0x10de");
	*out = (uint16_t)v;
	return 0;
}

static int parse_gpu(json_object *obj, size_t index, struct vg_spec_gpu *gpu,
		     struct vg_error **err)
{
	char where[32];
	snprintf(where, sizeof(where), ".gpus[%zu]", index);
	struct spec_reader r = { obj, where, err };
	static const char *const keys[] = { "bdf",	  "vendor_id", "device_id", "iommu_group",
					    "companions", "bar_bytes", NULL };
	if (!json_object_is_type(obj, json_type_object))
		return vg_error_set(err, EINVAL, "spec%s: must be an object", where);
	int ret = check_keys(&r, keys);
	if (ret == 0)
		ret = read_string(&r, "bdf", gpu->bdf, sizeof(gpu->bdf), true);
	if (ret == 0 && vg_bdf_parse(gpu->bdf, false, &gpu->addr, NULL) < 0)
		ret = bad(&r, "bdf", "is not a PCI address like 0000:3b:00.0");
	if (ret < 0)
		return ret;
	vg_bdf_format(&gpu->addr, gpu->bdf);
	gpu->vendor_id = 0;
	gpu->device_id = 0;
	if ((ret = read_hex16(&r, "vendor_id", &gpu->vendor_id)) < 0 ||
	    (ret = read_hex16(&r, "device_id", &gpu->device_id)) < 0)
		return ret;
	uint64_t group = UINT64_MAX;
	if ((ret = read_uint(&r, "iommu_group", 0, 1u << 20, &group)) < 0)
		return ret;
	gpu->iommu_group = group == UINT64_MAX ? -1 : (int)group;
	if ((ret = read_uint(&r, "bar_bytes", 0, UINT64_C(1) << 50, &gpu->bar_bytes)) < 0)
		return ret;
	json_object *list;
	if (json_object_object_get_ex(obj, "companions", &list)) {
		if (!json_object_is_type(list, json_type_array) ||
		    json_object_array_length(list) > VG_SPEC_MAX_COMPANIONS)
			return bad(&r, "companions", "must be a list of at most 7 PCI addresses");
		for (size_t i = 0; i < json_object_array_length(list); i++) {
			json_object *item = json_object_array_get_idx(list, i);
			const char *text = json_object_get_string(item);
			if (!json_object_is_type(item, json_type_string) ||
			    vg_bdf_parse(text, false, &gpu->companions[i], NULL) < 0)
				return bad(&r, "companions", "must hold PCI addresses");
			if (!vg_bdf_same_slot(&gpu->companions[i], &gpu->addr) ||
			    gpu->companions[i].function == gpu->addr.function)
				return bad(&r, "companions",
					   "must be other functions of the GPU's own slot");
			gpu->n_companions++;
		}
	}
	return 0;
}

static int parse_cidr(struct spec_reader *r, const char *key, const char *text, uint32_t *addr,
		      int *prefix)
{
	char copy[32];
	if (strlen(text) >= sizeof(copy))
		return bad(r, key, "is not an IPv4 address/prefix");
	strcpy(copy, text);
	char *slash = strchr(copy, '/');
	long len = 32;
	if (slash != NULL) {
		*slash = '\0';
		char *end = NULL;
		len = strtol(slash + 1, &end, 10);
		if (*end != '\0' || len < 8 || len > 30)
			return bad(r, key, "needs a prefix between /8 and /30");
	}
	struct in_addr in;
	if (inet_pton(AF_INET, copy, &in) != 1)
		return bad(r, key, "is not an IPv4 address");
	*addr = ntohl(in.s_addr);
	if (prefix)
		*prefix = (int)len;
	return 0;
}

static int parse_network(json_object *obj, struct vg_spec_network *net, struct vg_error **err)
{
	struct spec_reader r = { obj, ".network", err };
	static const char *const keys[] = { "host_cidr", "guest_addr", "tap_name", "nat", NULL };
	if (!json_object_is_type(obj, json_type_object))
		return vg_error_set(err, EINVAL, "spec.network: must be an object");
	int ret = check_keys(&r, keys);
	char host[32] = "", guest[32] = "";
	if (ret == 0)
		ret = read_string(&r, "host_cidr", host, sizeof(host), true);
	if (ret == 0)
		ret = read_string(&r, "guest_addr", guest, sizeof(guest), true);
	if (ret == 0)
		ret = read_string(&r, "tap_name", net->tap_name, sizeof(net->tap_name), false);
	if (ret == 0)
		ret = read_bool(&r, "nat", &net->nat);
	if (ret == 0)
		ret = parse_cidr(&r, "host_cidr", host, &net->host_addr, &net->prefix_len);
	if (ret == 0)
		ret = parse_cidr(&r, "guest_addr", guest, &net->guest_addr, NULL);
	if (ret < 0)
		return ret;
	uint32_t mask = net->prefix_len == 0 ? 0 : ~UINT32_C(0) << (32 - net->prefix_len);
	if ((net->host_addr & mask) != (net->guest_addr & mask) ||
	    net->host_addr == net->guest_addr)
		return bad(&r, "guest_addr", "must be another address in the host's subnet");
	for (const char *p = net->tap_name; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
			return bad(&r, "tap_name", "may hold only letters, digits, '-' and '_'");
	net->enabled = true;
	return 0;
}

static int parse_modules(json_object *obj, struct vg_sandbox_spec *spec, struct vg_error **err)
{
	if (!json_object_is_type(obj, json_type_array) ||
	    json_object_array_length(obj) > VG_SPEC_MAX_MODULES)
		return vg_error_set(err, EINVAL, "spec.modules: must be a list of at most %d names",
				    VG_SPEC_MAX_MODULES);
	for (size_t i = 0; i < json_object_array_length(obj); i++) {
		const char *name = json_object_get_string(json_object_array_get_idx(obj, i));
		size_t len = name ? strlen(name) : 0;
		if (len == 0 || len >= sizeof(spec->modules[0]) ||
		    strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_-") != len)
			return vg_error_set(err, EINVAL,
					    "spec.modules[%zu]: '%s' is not a kernel module name", i,
					    name ? name : "");
		strcpy(spec->modules[spec->n_modules++], name);
	}
	return 0;
}

static int parse_qemu_user(json_object *obj, struct vg_sandbox_spec *spec, struct vg_error **err)
{
	struct spec_reader r = { obj, ".qemu_user", err };
	static const char *const keys[] = { "uid", "gid", NULL };
	if (!json_object_is_type(obj, json_type_object))
		return vg_error_set(err, EINVAL, "spec.qemu_user: must be an object with uid and gid");
	uint64_t uid = UINT64_MAX, gid = UINT64_MAX;
	int ret = check_keys(&r, keys);
	if (ret == 0)
		ret = read_uint(&r, "uid", 1, 0xfffffffe, &uid);
	if (ret == 0)
		ret = read_uint(&r, "gid", 1, 0xfffffffe, &gid);
	if (ret == 0 && (uid == UINT64_MAX || gid == UINT64_MAX))
		ret = bad(&r, "uid", "uid and gid are both required (and never 0: that is root)");
	if (ret < 0)
		return ret;
	spec->qemu_uid = (int64_t)uid;
	spec->qemu_gid = (int64_t)gid;
	return 0;
}

static int parse_enums(struct spec_reader *r, struct vg_sandbox_spec *spec)
{
	char arch[16] = "", accel[16] = "", gic[8] = "";
	int ret = read_string(r, "arch", arch, sizeof(arch), false);
	if (ret == 0)
		ret = read_string(r, "accel", accel, sizeof(accel), false);
	if (ret == 0)
		ret = read_string(r, "gic_version", gic, sizeof(gic), false);
	if (ret < 0)
		return ret;
	if (strcmp(arch, "aarch64") == 0)
		spec->arch = VG_ARCH_AARCH64;
	else if (strcmp(arch, "x86_64") == 0)
		spec->arch = VG_ARCH_X86_64;
	else if (arch[0] != '\0')
		return bad(r, "arch", "must be x86_64 or aarch64");
	if (strcmp(accel, "kvm") == 0)
		spec->accel = VG_ACCEL_KVM;
	else if (strcmp(accel, "tcg") == 0)
		spec->accel = VG_ACCEL_TCG;
	else if (accel[0] != '\0')
		return bad(r, "accel", "must be kvm or tcg");
	if (strcmp(gic, "host") == 0)
		spec->gic_version = 0;
	else if (strcmp(gic, "3") == 0)
		spec->gic_version = 3;
	else if (gic[0] != '\0')
		return bad(r, "gic_version", "must be \"3\" or \"host\"");
	else
		spec->gic_version = spec->accel == VG_ACCEL_KVM ? 0 : 3;
	return 0;
}

static void spec_defaults(struct vg_sandbox_spec *spec)
{
	memset(spec, 0, sizeof(*spec));
	spec->arch = vg_arch_host();
	spec->accel = VG_ACCEL_KVM;
	spec->vcpus = 1;
	spec->memory_mib = 512;
	strcpy(spec->sysfs_root, "/sys");
	strcpy(spec->dev_root, "/dev");
	spec->qemu_uid = -1;
	spec->qemu_gid = -1;
	spec->ready_timeout_s = 120;
	spec->stop_timeout_s = 10;
}

int vg_spec_parse_json(const char *text, struct vg_sandbox_spec *spec, struct vg_error **err)
{
	spec_defaults(spec);
	json_tokener *tok = json_tokener_new();
	if (tok == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	json_object *root = json_tokener_parse_ex(tok, text, (int)strlen(text));
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	json_tokener_free(tok);
	if (root == NULL || jerr != json_tokener_success) {
		json_object_put(root);
		return vg_error_set(err, EINVAL, "spec: invalid JSON: %s",
				    json_tokener_error_desc(jerr));
	}
	struct spec_reader r = { root, "", err };
	static const char *const keys[] = {
		"id",	     "arch",	    "accel",	  "gic_version",     "vcpus",
		"memory_mib", "hugepages",  "prealloc",	  "qemu_binary",     "kernel",
		"initrd",    "cmdline",	    "modules",	  "gpus",	     "network",
		"sysfs_root", "dev_root", "ready_timeout_s", "stop_timeout_s", "qemu_user", NULL,
	};
	uint64_t vcpus = spec->vcpus, ready = spec->ready_timeout_s, stop = spec->stop_timeout_s;
	json_object *v;
	int ret = json_object_is_type(root, json_type_object)
			  ? check_keys(&r, keys)
			  : vg_error_set(err, EINVAL, "spec: must be a JSON object");
	if (ret == 0)
		ret = read_string(&r, "id", spec->id, sizeof(spec->id), true);
	if (ret == 0 && !vg_sandbox_id_is_valid(spec->id))
		ret = bad(&r, "id", "must match [a-z0-9][a-z0-9-]* and be at most 64 characters");
	if (ret == 0)
		ret = parse_enums(&r, spec);
	if (ret == 0)
		ret = read_uint(&r, "vcpus", 1, 256, &vcpus);
	if (ret == 0)
		ret = read_uint(&r, "memory_mib", 64, UINT64_C(1) << 22, &spec->memory_mib);
	if (ret == 0)
		ret = read_bool(&r, "hugepages", &spec->hugepages);
	if (ret == 0)
		ret = read_bool(&r, "prealloc", &spec->prealloc);
	if (ret == 0)
		ret = read_string(&r, "qemu_binary", spec->qemu_binary, sizeof(spec->qemu_binary),
				  false);
	if (ret == 0)
		ret = read_string(&r, "kernel", spec->kernel, sizeof(spec->kernel), true);
	if (ret == 0)
		ret = read_string(&r, "initrd", spec->initrd, sizeof(spec->initrd), false);
	if (ret == 0)
		ret = read_string(&r, "cmdline", spec->cmdline_extra, sizeof(spec->cmdline_extra),
				  false);
	if (ret == 0)
		ret = read_string(&r, "sysfs_root", spec->sysfs_root, sizeof(spec->sysfs_root),
				  false);
	if (ret == 0)
		ret = read_string(&r, "dev_root", spec->dev_root, sizeof(spec->dev_root), false);
	if (ret == 0)
		ret = read_uint(&r, "ready_timeout_s", 1, 3600, &ready);
	if (ret == 0)
		ret = read_uint(&r, "stop_timeout_s", 1, 600, &stop);
	if (ret == 0 && json_object_object_get_ex(root, "qemu_user", &v))
		ret = parse_qemu_user(v, spec, err);
	if (ret == 0 && json_object_object_get_ex(root, "modules", &v))
		ret = parse_modules(v, spec, err);
	if (ret == 0 && json_object_object_get_ex(root, "network", &v))
		ret = parse_network(v, &spec->network, err);
	if (ret == 0 && json_object_object_get_ex(root, "gpus", &v)) {
		if (!json_object_is_type(v, json_type_array) ||
		    json_object_array_length(v) > VG_SPEC_MAX_GPUS)
			ret = bad(&r, "gpus", "must be a list of at most 16 GPUs");
		for (size_t i = 0; ret == 0 && i < json_object_array_length(v); i++) {
			ret = parse_gpu(json_object_array_get_idx(v, i), i, &spec->gpus[i], err);
			spec->n_gpus += ret == 0;
		}
	}
	json_object_put(root);
	spec->vcpus = (unsigned)vcpus;
	spec->ready_timeout_s = (unsigned)ready;
	spec->stop_timeout_s = (unsigned)stop;
	return ret;
}

int vg_spec_load(const char *path, struct vg_sandbox_spec *spec, struct vg_error **err)
{
	cleanup_free char *text = NULL;
	int ret = vg_read_file(path, 1u << 20, &text, NULL, err);
	if (ret < 0)
		return ret;
	ret = vg_spec_parse_json(text, spec, err);
	if (ret < 0)
		return vg_error_prefix(err, "%s", path);
	return 0;
}

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/allocator.h"
#include "agent/crash_point.h"
#include "agent/gpu_request.h"
#include "agent/sandbox_record.h"
#include "agent/sandboxes-priv.h"
#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/config.h"
#include "lib/error.h"
#include "lib/log.h"
#include "lib/process.h"

/* "<name>-<8 hex>": readable in listings, unique, and valid as a TAP and nft table suffix. */
static int make_sandbox_id(const char *name, char out[65], struct vg_error **err)
{
	char base[41];
	size_t n = 0;
	for (const char *p = name; *p && n < sizeof(base) - 1; p++) {
		char c = (char)tolower((unsigned char)*p);
		base[n++] = (isalnum((unsigned char)c) && isascii((unsigned char)c)) ? c : '-';
	}
	while (n > 0 && base[n - 1] == '-')
		n--;
	base[n] = '\0';
	size_t start = strspn(base, "-");
	unsigned char random[4];
	cleanup_close int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, random, sizeof(random)) != (ssize_t)sizeof(random))
		return vg_error_set_errno(err, errno ? errno : EIO, "read /dev/urandom");
	snprintf(out, 65, "%s%s%02x%02x%02x%02x", base[start] ? base + start : "sandbox", "-",
		 random[0], random[1], random[2], random[3]);
	return 0;
}

static int collect_annotations(json_object *annotations, struct vg_kv *kv, size_t max, size_t *n,
			       struct vg_error **err)
{
	*n = 0;
	json_object_object_foreach(annotations, key, value)
	{
		if (*n == max)
			return vg_error_set(err, EINVAL, "too many annotations (at most %zu)", max);
		kv[(*n)++] = (struct vg_kv){ key, json_object_get_string(value) };
	}
	return 0;
}

static int pick_subnet(struct vg_sandboxes *mgr, uint32_t *subnet, struct vg_error **err)
{
	uint32_t used[512];
	size_t n = 0;
	for (struct vg_sandbox *sb = mgr->list; sb && n < VG_ARRAY_SIZE(used); sb = sb->next)
		if (sb->has_net && sb->state != VG_SB_EXITED && sb->state != VG_SB_FAILED)
			used[n++] = sb->subnet;
	return vg_net_pool_take(&mgr->pool, used, n, subnet, err);
}

static json_object *gpu_spec(const struct vg_gpu *gpu)
{
	json_object *obj = json_object_new_object();
	char id[8];
	json_object_object_add(obj, "bdf", json_object_new_string(gpu->fn.bdf));
	snprintf(id, sizeof(id), "0x%04x", gpu->fn.vendor_id);
	json_object_object_add(obj, "vendor_id", json_object_new_string(id));
	snprintf(id, sizeof(id), "0x%04x", gpu->fn.device_id);
	json_object_object_add(obj, "device_id", json_object_new_string(id));
	if (gpu->group.number >= 0)
		json_object_object_add(obj, "iommu_group", json_object_new_int(gpu->group.number));
	json_object *companions = json_object_new_array();
	for (size_t i = 0; i < gpu->n_companions; i++)
		if (vg_bdf_same_slot(&gpu->companions[i].addr, &gpu->fn.addr))
			json_object_array_add(companions,
					      json_object_new_string(gpu->companions[i].bdf));
	json_object_object_add(obj, "companions", companions);
	uint64_t bars = 0;
	for (int i = 0; i < VG_BAR_COUNT; i++)
		bars += gpu->bar_sizes[i];
	json_object_object_add(obj, "bar_bytes", json_object_new_int64((int64_t)bars));
	return obj;
}

static const char *choose_accel(const struct vg_sandboxes *mgr, const struct vg_vm_shape *vm)
{
	if (vm->has_accel)
		return vm->accel == VG_VM_ACCEL_KVM ? "kvm" : "tcg";
	if (strcmp(mgr->config->accel, "auto") != 0)
		return mgr->config->accel;
	const struct vg_host_report *host = &mgr->devices->scan.host;
	for (size_t i = 0; i < host->n_checks; i++)
		if (strcmp(host->checks[i].name, "kvm") == 0)
			return host->checks[i].status == VG_CHECK_OK ? "kvm" : "tcg";
	return "tcg";
}

static int write_spec(struct vg_sandboxes *mgr, struct vg_sandbox *sb, const struct vg_vm_shape *vm,
		      const size_t *chosen, size_t n_chosen, struct vg_error **err)
{
	const struct vg_config *config = mgr->config;
	json_object *spec = json_object_new_object();
	json_object_object_add(spec, "id", json_object_new_string(sb->id));
	if (vm->has_arch)
		json_object_object_add(spec, "arch", json_object_new_string(
							     vm->arch == VG_VM_ARCH_AARCH64 ? "aarch64"
											     : "x86_64"));
	json_object_object_add(spec, "accel", json_object_new_string(choose_accel(mgr, vm)));
	json_object_object_add(spec, "vcpus", json_object_new_int64(
						      vm->has_vcpus ? vm->vcpus : config->default_vcpus));
	json_object_object_add(spec, "memory_mib",
			       json_object_new_int64(vm->has_memory_mib ? (int64_t)vm->memory_mib
									: config->default_memory_mib));
	json_object_object_add(spec, "kernel", json_object_new_string(
						       vm->has_kernel ? vm->kernel : config->guest_kernel));
	const char *initrd = vm->has_initrd ? vm->initrd : config->guest_initrd;
	if (initrd[0] != '\0')
		json_object_object_add(spec, "initrd", json_object_new_string(initrd));
	if (vm->has_cmdline)
		json_object_object_add(spec, "cmdline", json_object_new_string(vm->cmdline));
	json_object *modules = json_object_new_array();
	for (size_t i = 0; i < vm->n_modules; i++)
		json_object_array_add(modules, json_object_new_string(vm->modules[i]));
	json_object_object_add(spec, "modules", modules);
	json_object *gpus = json_object_new_array();
	for (size_t i = 0; i < n_chosen; i++)
		json_object_array_add(gpus, gpu_spec(&mgr->devices->scan.inventory->gpus[chosen[i]]));
	json_object_object_add(spec, "gpus", gpus);
	if (sb->has_net) {
		char host[16], guest[16], cidr[24];
		vg_ipv4_format(sb->subnet + 1, host);
		vg_ipv4_format(sb->subnet + 2, guest);
		snprintf(cidr, sizeof(cidr), "%s/30", host);
		json_object *net = json_object_new_object();
		json_object_object_add(net, "host_cidr", json_object_new_string(cidr));
		json_object_object_add(net, "guest_addr", json_object_new_string(guest));
		json_object_object_add(spec, "network", net);
	}
	if (config->qemu_uid >= 0) {
		json_object *user = json_object_new_object();
		json_object_object_add(user, "uid", json_object_new_int64(config->qemu_uid));
		json_object_object_add(user, "gid", json_object_new_int64(config->qemu_gid));
		json_object_object_add(spec, "qemu_user", user);
	}
	if (config->qemu_binary[0] != '\0')
		json_object_object_add(spec, "qemu_binary",
				       json_object_new_string(config->qemu_binary));
	json_object_object_add(spec, "sysfs_root", json_object_new_string(config->sysfs_root));
	json_object_object_add(spec, "dev_root", json_object_new_string(config->dev_root));
	json_object_object_add(spec, "ready_timeout_s",
			       json_object_new_int64(config->ready_timeout_s));
	char path[4200];
	snprintf(path, sizeof(path), "%s/spec.json", sb->dir);
	int ret = vg_atomic_write_str(
		path, json_object_to_json_string_ext(spec, JSON_C_TO_STRING_PRETTY), 0644, err);
	json_object_put(spec);
	return ret;
}

static int check_request(struct vg_sandboxes *mgr, const struct vg_sb_run_request *req,
			 const struct vg_vm_shape *vm, struct vg_error **err)
{
	if (req->runtime_handler && req->runtime_handler[0] != '\0' &&
	    strcmp(req->runtime_handler, "vmgpu") != 0)
		return vg_error_set(err, EINVAL,
				    "unknown runtime handler '%s' (this node serves \"\" and \"vmgpu\")",
				    req->runtime_handler);
	const char *kernel = vm->has_kernel ? vm->kernel : mgr->config->guest_kernel;
	if (kernel[0] == '\0')
		return vg_error_set(err, EINVAL,
				    "no guest kernel: set the vmgpu.io/kernel annotation or "
				    "guest_kernel in the agent's config");
	if (access(kernel, R_OK) < 0)
		return vg_error_set_errno(err, errno, "guest kernel %s", kernel);
	const char *initrd = vm->has_initrd ? vm->initrd : mgr->config->guest_initrd;
	if (initrd[0] != '\0' && access(initrd, R_OK) < 0)
		return vg_error_set_errno(err, errno, "guest initrd %s", initrd);
	return 0;
}

static void abandon(struct vg_sandboxes *mgr, struct vg_sandbox *sb)
{
	vg_device_table_release(mgr->devices, sb->id);
	vg_device_table_refresh(mgr->devices);
	for (struct vg_sandbox **link = &mgr->list; *link; link = &(*link)->next) {
		if (*link == sb) {
			*link = sb->next;
			break;
		}
	}
	vg_sandbox_remove_dir(sb->dir, NULL);
	json_object_put(sb->labels);
	json_object_put(sb->annotations);
	free(sb);
}

int vg_sandboxes_run(struct vg_sandboxes *mgr, const struct vg_sb_run_request *req,
		     vg_sb_done_fn done, void *ctx, struct vg_error **err)
{
	struct vg_kv kv[128];
	size_t n_kv;
	struct vg_gpu_request gpu_req;
	struct vg_vm_shape vm;
	json_object *annotations = req->annotations ? req->annotations : NULL;
	int ret = annotations ? collect_annotations(annotations, kv, VG_ARRAY_SIZE(kv), &n_kv, err)
			      : (n_kv = 0, 0);
	if (ret == 0)
		ret = vg_sandbox_request_parse(kv, n_kv, &gpu_req, &vm, err);
	if (ret == 0)
		ret = check_request(mgr, req, &vm, err);
	if (ret < 0)
		return ret;

	/* Allocation and ownership happen with no yield in between: the loop is single-threaded. */
	size_t chosen[VG_REQ_MAX_GPUS], n_chosen = 0;
	const struct vg_inventory *inv = mgr->devices->scan.inventory;
	ret = vg_allocate(mgr->devices->view, inv->n_gpus, &gpu_req, chosen, &n_chosen, err);
	if (ret < 0)
		return ret;
	vg_crash_point("after-allocate");
	uint32_t subnet = 0;
	bool has_net = vm.network == VG_VM_NETWORK_TAP;
	if (has_net && (ret = pick_subnet(mgr, &subnet, err)) < 0)
		return ret;

	char id[65];
	if ((ret = make_sandbox_id(req->name ? req->name : "", id, err)) < 0)
		return ret;
	struct vg_sandbox *sb = vg_sandbox_new(mgr, id);
	if (sb == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	snprintf(sb->name, sizeof(sb->name), "%s", req->name ? req->name : "");
	snprintf(sb->uid, sizeof(sb->uid), "%s", req->uid ? req->uid : "");
	snprintf(sb->pod_namespace, sizeof(sb->pod_namespace), "%s",
		 req->pod_namespace ? req->pod_namespace : "");
	snprintf(sb->runtime_handler, sizeof(sb->runtime_handler), "%s",
		 req->runtime_handler ? req->runtime_handler : "");
	sb->attempt = req->attempt;
	json_object_deep_copy(req->labels ? req->labels : NULL, &sb->labels, NULL);
	json_object_deep_copy(req->annotations ? req->annotations : NULL, &sb->annotations, NULL);
	if (sb->labels == NULL)
		sb->labels = json_object_new_object();
	if (sb->annotations == NULL)
		sb->annotations = json_object_new_object();
	sb->created_ns = vg_now_ns();
	sb->state = VG_SB_CREATING;
	sb->has_net = has_net;
	sb->subnet = subnet;
	for (size_t i = 0; i < n_chosen; i++) {
		snprintf(sb->gpus[sb->n_gpus++], VG_BDF_STRLEN, "%s", inv->gpus[chosen[i]].fn.bdf);
		vg_device_table_set_owner(mgr->devices, chosen[i], sb->id);
	}
	vg_sandbox_link(mgr, sb);
	vg_device_table_refresh(mgr->devices);

	if (mkdir(sb->dir, 0711) < 0) {
		ret = vg_error_set_errno(err, errno, "create %s", sb->dir);
		abandon(mgr, sb);
		return ret;
	}
	/* The record is durable before any side effect, so a crash from here on is repairable. */
	if ((ret = vg_sandbox_record_save(sb, err)) < 0 ||
	    (vg_crash_point("after-record"), ret = write_spec(mgr, sb, &vm, chosen, n_chosen, err)) < 0 ||
	    (vg_crash_point("after-spec"), ret = vg_sandbox_launch(sb, done, ctx, err)) < 0) {
		abandon(mgr, sb);
		return ret;
	}
	vg_info("sandbox %s: creating for %s/%s with %zu GPU(s)", sb->id, sb->pod_namespace,
		sb->name, sb->n_gpus);
	if (mgr->on_change)
		mgr->on_change(mgr->on_change_ctx);
	return 0;
}

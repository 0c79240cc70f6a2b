#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/allocator.h"
#include "agent/crash_point.h"
#include "agent/gpu_request.h"
#include "agent/podresources.h"
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

/* ---- the kubelet's choice (PodResources) ---- */

/* A RunPodSandbox for a pod, waiting for the kubelet to say which GPUs it gave the pod. */
struct vg_pod_lookup {
	struct vg_pod_lookup *next;
	struct vg_sandboxes *mgr; /* NULL once cancelled: done() was called already */
	char name[254], uid[128], pod_namespace[254], runtime_handler[64];
	uint32_t attempt;
	json_object *labels, *annotations;
	struct vg_gpu_request gpu_req;
	struct vg_vm_shape vm;
	vg_sb_done_fn done;
	void *ctx;
};

static void pod_lookup_free(struct vg_pod_lookup *lookup)
{
	json_object_put(lookup->labels);
	json_object_put(lookup->annotations);
	free(lookup);
}

static void pod_lookup_unlink(struct vg_sandboxes *mgr, struct vg_pod_lookup *lookup)
{
	for (struct vg_pod_lookup **link = &mgr->lookups; *link; link = &(*link)->next) {
		if (*link == lookup) {
			*link = lookup->next;
			return;
		}
	}
}

void vg_sandboxes_cancel_lookups(struct vg_sandboxes *mgr)
{
	while (mgr->lookups != NULL) {
		struct vg_pod_lookup *lookup = mgr->lookups;
		mgr->lookups = lookup->next;
		lookup->mgr =
			NULL; /* freed when PodResources answers (the loop cancels the call) */
		cleanup_error struct vg_error *err = NULL;
		vg_error_set(&err, ECANCELED,
			     "the agent is shutting down before pod %s/%s got a "
			     "sandbox",
			     lookup->pod_namespace, lookup->name);
		lookup->done(lookup->ctx, NULL, err);
	}
}

static void join_ids(const struct vg_pod_gpus *gpus, char *out, size_t size)
{
	size_t used = 0;
	out[0] = '\0';
	for (size_t i = 0; i < gpus->n && used < size; i++)
		used += (size_t)snprintf(out + used, size - used, "%s%s", i ? "," : "",
					 gpus->items[i].id);
}

/* The annotations may repeat the kubelet's choice but not contradict it. */
static int check_annotations_agree(const struct vg_device_table *table,
				   const struct vg_gpu_request *req, const struct vg_pod_gpus *gpus,
				   const char *ids, struct vg_error **err)
{
	const char *pod = gpus->items[0].pod;
	const struct vg_inventory *inv = table->scan.inventory;
	switch (req->kind) {
	case VG_REQ_NONE:
		return 0;
	case VG_REQ_COUNT:
	case VG_REQ_SELECTOR:
		if (req->count != gpus->n)
			return vg_error_set(err, EINVAL,
					    "%s asks for %u GPU(s) but the kubelet gave pod %s %zu "
					    "(%s): drop the annotation or make it agree",
					    req->any ? "vmgpu.io/gpu=any" : "vmgpu.io/gpu-count",
					    req->count, pod, gpus->n, ids);
		for (size_t i = 0; req->kind == VG_REQ_SELECTOR && i < gpus->n; i++)
			if (!vg_selector_matches(&req->selector, &table->view[gpus->items[i].pos]))
				return vg_error_set(
					err, EINVAL,
					"GPU %s, which the kubelet gave pod %s, does not "
					"match vmgpu.io/gpu-selector %s",
					gpus->items[i].id, pod, req->selector.text);
		return 0;
	case VG_REQ_DEVICES:
		for (size_t i = 0; i < req->n_devices; i++) {
			const struct vg_gpu_ref *ref = &req->devices[i];
			bool given = false;
			for (size_t j = 0; j < gpus->n && !given; j++) {
				const struct vg_gpu *gpu = &inv->gpus[gpus->items[j].pos];
				given = ref->is_index ? gpu->index >= 0 &&
								(unsigned)gpu->index == ref->index
						      : strcasecmp(gpu->fn.bdf, ref->text) == 0;
			}
			if (!given || req->n_devices != gpus->n)
				return vg_error_set(
					err, EINVAL,
					"vmgpu.io/gpu-devices names %s but the kubelet gave "
					"pod %s exactly %s: drop the annotation or make it "
					"agree",
					ref->text, pod, ids);
		}
		return 0;
	}
	return 0;
}

/* The GPUs the kubelet gave the pod, checked and in table order; marked as the kubelet's. */
static int take_pod_gpus(struct vg_sandboxes *mgr, const struct vg_gpu_request *req,
			 const struct vg_pod_gpus *gpus, size_t *chosen, size_t *n_chosen,
			 struct vg_error **err)
{
	struct vg_device_table *table = mgr->devices;
	const char *pod = gpus->items[0].pod;
	char ids[VG_REQ_MAX_GPUS * VG_BDF_STRLEN + 64];
	join_ids(gpus, ids, sizeof(ids));
	if (gpus->n > VG_REQ_MAX_GPUS)
		return vg_error_set(err, EINVAL,
				    "the kubelet gave pod %s %zu GPUs; a sandbox takes "
				    "at most %d",
				    pod, gpus->n, VG_REQ_MAX_GPUS);
	for (size_t i = 0; i < gpus->n; i++)
		if (gpus->items[i].pos < 0)
			return vg_error_set(err, ENOENT,
					    "the kubelet gave pod %s device %s of %s, which is not "
					    "a GPU of this node (any more)",
					    pod, gpus->items[i].id, gpus->items[i].resource);
	int ret = check_annotations_agree(table, req, gpus, ids, err);
	if (ret < 0)
		return ret;
	for (size_t i = 0; i < gpus->n; i++) {
		size_t pos = (size_t)gpus->items[i].pos;
		const struct vg_gpu *gpu = &table->scan.inventory->gpus[pos];
		if (table->owner[pos][0] != '\0')
			return vg_error_set(err, EBUSY,
					    "GPU %s, which the kubelet gave pod %s, is "
					    "allocated to sandbox %s",
					    gpu->fn.bdf, pod, table->owner[pos]);
		if (gpu->state != VG_GPU_AVAILABLE)
			return vg_error_set(err, EBUSY,
					    "GPU %s, which the kubelet gave pod %s, is "
					    "%s: %s",
					    gpu->fn.bdf, pod, vg_gpu_state_name(gpu->state),
					    gpu->n_reasons ? gpu->reasons[0]
							   : "no reason recorded");
		/* In table order, which is the order vg_allocate answers in too. */
		size_t at = i;
		while (at > 0 && chosen[at - 1] > pos) {
			chosen[at] = chosen[at - 1];
			at--;
		}
		chosen[at] = pos;
	}
	*n_chosen = gpus->n;
	for (size_t i = 0; i < gpus->n; i++)
		vg_device_table_hold_for_kubelet(table, (size_t)gpus->items[i].pos, pod, true);
	vg_info("pod %s: taking the GPUs the kubelet gave it: %s", pod, ids);
	return 0;
}

/* ---- creating ---- */

static int create_sandbox(struct vg_sandboxes *mgr, const struct vg_sb_run_request *req,
			  const struct vg_gpu_request *gpu_req, const struct vg_vm_shape *vm,
			  const struct vg_pod_gpus *pod_gpus, vg_sb_done_fn done, void *ctx,
			  struct vg_error **err)
{
	/* Allocation and ownership happen with no yield in between: the loop is single-threaded. */
	size_t chosen[VG_REQ_MAX_GPUS], n_chosen = 0;
	const struct vg_inventory *inv = mgr->devices->scan.inventory;
	int ret = pod_gpus != NULL && pod_gpus->n > 0
			  ? take_pod_gpus(mgr, gpu_req, pod_gpus, chosen, &n_chosen, err)
			  : vg_allocate(mgr->devices->view, inv->n_gpus, gpu_req, chosen, &n_chosen,
					err);
	if (ret < 0)
		return ret;
	vg_crash_point("after-allocate");
	uint32_t subnet = 0;
	bool has_net = vm->network == VG_VM_NETWORK_TAP;
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
	    (vg_crash_point("after-record"), ret = write_spec(mgr, sb, vm, chosen, n_chosen, err)) <
		    0 ||
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

static void on_pod_gpus(void *ctx, const struct vg_pod_gpus *gpus, const struct vg_error *err)
{
	struct vg_pod_lookup *lookup = ctx;
	struct vg_sandboxes *mgr = lookup->mgr;
	if (mgr == NULL) { /* cancelled: the caller has its answer */
		pod_lookup_free(lookup);
		return;
	}
	pod_lookup_unlink(mgr, lookup);
	cleanup_error struct vg_error *fail = NULL;
	if (err != NULL && err->code == ENOENT) {
		/* No kubelet answers, so none is handing out GPUs now; the holds in the table
		 * still keep what it gave earlier. */
		vg_warn("pod %s/%s: %s; using its annotations", lookup->pod_namespace, lookup->name,
			err->msg);
		gpus = NULL;
	} else if (err != NULL) {
		vg_error_set(&fail, err->code,
			     "cannot learn which GPUs the kubelet gave pod %s/%s: %s",
			     lookup->pod_namespace, lookup->name, err->msg);
	}
	struct vg_sb_run_request req = {
		.name = lookup->name,
		.uid = lookup->uid,
		.pod_namespace = lookup->pod_namespace,
		.attempt = lookup->attempt,
		.runtime_handler = lookup->runtime_handler,
		.labels = lookup->labels,
		.annotations = lookup->annotations,
	};
	if (fail == NULL)
		create_sandbox(mgr, &req, &lookup->gpu_req, &lookup->vm, gpus, lookup->done,
			       lookup->ctx, &fail);
	if (fail != NULL)
		lookup->done(lookup->ctx, NULL, fail);
	pod_lookup_free(lookup);
}

static int ask_kubelet(struct vg_sandboxes *mgr, const struct vg_sb_run_request *req,
		       const struct vg_gpu_request *gpu_req, const struct vg_vm_shape *vm,
		       vg_sb_done_fn done, void *ctx, struct vg_error **err)
{
	struct vg_pod_lookup *lookup = calloc(1, sizeof(*lookup));
	if (lookup == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	lookup->mgr = mgr;
	snprintf(lookup->name, sizeof(lookup->name), "%s", req->name);
	snprintf(lookup->uid, sizeof(lookup->uid), "%s", req->uid);
	snprintf(lookup->pod_namespace, sizeof(lookup->pod_namespace), "%s", req->pod_namespace);
	snprintf(lookup->runtime_handler, sizeof(lookup->runtime_handler), "%s",
		 req->runtime_handler ? req->runtime_handler : "");
	lookup->attempt = req->attempt;
	json_object_deep_copy(req->labels, &lookup->labels, NULL);
	json_object_deep_copy(req->annotations, &lookup->annotations, NULL);
	lookup->gpu_req = *gpu_req;
	lookup->vm = *vm;
	lookup->done = done;
	lookup->ctx = ctx;
	int ret = vg_podresources_pod_gpus(mgr->loop, mgr->config, mgr->devices,
					   lookup->pod_namespace, lookup->name, on_pod_gpus, lookup,
					   err);
	if (ret < 0) {
		pod_lookup_free(lookup);
		return vg_error_prefix(err, "asking the kubelet which GPUs pod %s/%s has",
				       req->pod_namespace, req->name);
	}
	lookup->next = mgr->lookups;
	mgr->lookups = lookup;
	return 0;
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
	/* A pod the kubelet runs: its GPUs are the ones the kubelet allocated, so ask it first
	 * and continue when it answers. */
	bool names_pod = req->name && req->name[0] && req->pod_namespace && req->pod_namespace[0] &&
			 req->uid && req->uid[0];
	if (names_pod && vg_podresources_socket_present(mgr->config->pod_resources_socket))
		return ask_kubelet(mgr, req, &gpu_req, &vm, done, ctx, err);
	return create_sandbox(mgr, req, &gpu_req, &vm, NULL, done, ctx, err);
}

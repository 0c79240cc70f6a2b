#include "agent/cri_service.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "agent/api_util.h"
#include "agent/net_pool.h"
#include "agent/sandboxes.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/process.h"
#include "method_paths.h"
#include "runtime/v1/api.pb-c.h"

#define UNPACK_OR_FAIL(type, fn, call, data, len)                                                  \
	({                                                                                         \
		type *msg_ = fn(NULL, len, data);                                                  \
		if (msg_ == NULL)                                                                  \
			vg_grpc_call_fail(call, VG_GRPC_INVALID_ARGUMENT,                          \
					  "the request is not a valid " #type " message");         \
		msg_;                                                                              \
	})

static void on_version(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	(void)ctx;
	Runtime__V1__VersionRequest *req = UNPACK_OR_FAIL(
		Runtime__V1__VersionRequest, runtime__v1__version_request__unpack, call, data, len);
	if (req == NULL)
		return;
	runtime__v1__version_request__free_unpacked(req, NULL);
	Runtime__V1__VersionResponse resp = RUNTIME__V1__VERSION_RESPONSE__INIT;
	resp.version = (char *)"0.1.0";
	resp.runtime_name = (char *)"vmgpu";
	resp.runtime_version = (char *)VMGPU_VERSION;
	resp.runtime_api_version = (char *)"v1";
	vg_reply_message(call, &resp.base);
}

/* The agent stopping while a caller waits is a transient condition, not a failure. */
static bool fail_if_shutting_down(struct vg_grpc_call *call, const struct vg_error *err)
{
	if (err == NULL || err->code != ECANCELED)
		return false;
	vg_grpc_call_fail(call, VG_GRPC_UNAVAILABLE, err->msg);
	return true;
}

static void run_done(void *ctx, const char *sandbox_id, const struct vg_error *err)
{
	struct vg_grpc_call *call = ctx;
	if (fail_if_shutting_down(call, err))
		return;
	if (err != NULL) {
		vg_grpc_call_fail_error(call, err);
		return;
	}
	Runtime__V1__RunPodSandboxResponse resp = RUNTIME__V1__RUN_POD_SANDBOX_RESPONSE__INIT;
	resp.pod_sandbox_id = (char *)sandbox_id;
	vg_reply_message(call, &resp.base);
}

static void on_run(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	struct vg_sandboxes *mgr = ctx;
	Runtime__V1__RunPodSandboxRequest *req =
		UNPACK_OR_FAIL(Runtime__V1__RunPodSandboxRequest,
			       runtime__v1__run_pod_sandbox_request__unpack, call, data, len);
	if (req == NULL)
		return;
	const Runtime__V1__PodSandboxConfig *config = req->config;
	const Runtime__V1__PodSandboxMetadata *meta = config ? config->metadata : NULL;
	json_object *labels = vg_map_to_json(config ? (void *const *)config->labels : NULL,
					     config ? config->n_labels : 0);
	json_object *annotations = vg_map_to_json(
		config ? (void *const *)config->annotations : NULL, config ? config->n_annotations : 0);
	struct vg_sb_run_request run = {
		.name = meta ? meta->name : "",
		.uid = meta ? meta->uid : "",
		.pod_namespace = meta ? meta->namespace_ : "",
		.attempt = meta ? meta->attempt : 0,
		.runtime_handler = req->runtime_handler,
		.labels = labels,
		.annotations = annotations,
	};
	cleanup_error struct vg_error *err = NULL;
	if (config == NULL || meta == NULL)
		vg_error_set(&err, EINVAL, "RunPodSandbox needs config.metadata (name, uid, namespace)");
	else
		vg_sandboxes_run(mgr, &run, run_done, call, &err);
	if (err != NULL)
		vg_grpc_call_fail_error(call, err);
	json_object_put(labels);
	json_object_put(annotations);
	runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
}

/* Stop and Remove answer with an empty message, which is zero bytes on the wire. */
static void empty_reply_done(void *ctx, const char *sandbox_id, const struct vg_error *err)
{
	(void)sandbox_id;
	struct vg_grpc_call *call = ctx;
	if (fail_if_shutting_down(call, err))
		return;
	if (err != NULL) {
		vg_grpc_call_fail_error(call, err);
		return;
	}
	static const uint8_t nothing[1];
	vg_grpc_call_reply(call, nothing, 0);
}

static void on_stop(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	Runtime__V1__StopPodSandboxRequest *req =
		UNPACK_OR_FAIL(Runtime__V1__StopPodSandboxRequest,
			       runtime__v1__stop_pod_sandbox_request__unpack, call, data, len);
	if (req == NULL)
		return;
	cleanup_error struct vg_error *err = NULL;
	if (vg_sandboxes_stop(ctx, req->pod_sandbox_id, empty_reply_done, call, &err) < 0)
		vg_grpc_call_fail_error(call, err);
	runtime__v1__stop_pod_sandbox_request__free_unpacked(req, NULL);
}

static void on_remove(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	Runtime__V1__RemovePodSandboxRequest *req =
		UNPACK_OR_FAIL(Runtime__V1__RemovePodSandboxRequest,
			       runtime__v1__remove_pod_sandbox_request__unpack, call, data, len);
	if (req == NULL)
		return;
	cleanup_error struct vg_error *err = NULL;
	if (vg_sandboxes_remove(ctx, req->pod_sandbox_id, empty_reply_done, call, &err) < 0)
		vg_grpc_call_fail_error(call, err);
	runtime__v1__remove_pod_sandbox_request__free_unpacked(req, NULL);
}

static Runtime__V1__PodSandboxState cri_state(const struct vg_sandbox *sb)
{
	return sb->state == VG_SB_READY ? RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_READY
					 : RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_NOTREADY;
}

static void fill_metadata(const struct vg_sandbox *sb, Runtime__V1__PodSandboxMetadata *meta)
{
	meta->name = (char *)sb->name;
	meta->uid = (char *)sb->uid;
	meta->namespace_ = (char *)sb->pod_namespace;
	meta->attempt = sb->attempt;
}

static void on_status(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	Runtime__V1__PodSandboxStatusRequest *req =
		UNPACK_OR_FAIL(Runtime__V1__PodSandboxStatusRequest,
			       runtime__v1__pod_sandbox_status_request__unpack, call, data, len);
	if (req == NULL)
		return;
	const struct vg_sandbox *sb = vg_sandboxes_find(ctx, req->pod_sandbox_id);
	if (sb == NULL) {
		char message[160];
		snprintf(message, sizeof(message), "no sandbox %.64s on this node",
			 req->pod_sandbox_id);
		vg_grpc_call_fail(call, VG_GRPC_NOT_FOUND, message);
		runtime__v1__pod_sandbox_status_request__free_unpacked(req, NULL);
		return;
	}
	Runtime__V1__PodSandboxMetadata meta = RUNTIME__V1__POD_SANDBOX_METADATA__INIT;
	Runtime__V1__PodSandboxNetworkStatus net = RUNTIME__V1__POD_SANDBOX_NETWORK_STATUS__INIT;
	Runtime__V1__PodSandboxStatus status = RUNTIME__V1__POD_SANDBOX_STATUS__INIT;
	Runtime__V1__PodSandboxStatusResponse resp = RUNTIME__V1__POD_SANDBOX_STATUS_RESPONSE__INIT;
	fill_metadata(sb, &meta);
	char guest_ip[16] = "";
	if (sb->has_net)
		vg_ipv4_format(sb->subnet + 2, guest_ip);
	net.ip = guest_ip;
	status.id = (char *)sb->id;
	status.metadata = &meta;
	status.state = cri_state(sb);
	status.created_at = sb->created_ns;
	status.network = &net;
	status.runtime_handler = (char *)sb->runtime_handler;
	static const Runtime__V1__PodSandboxStatus__LabelsEntry label_init =
		RUNTIME__V1__POD_SANDBOX_STATUS__LABELS_ENTRY__INIT;
	static const Runtime__V1__PodSandboxStatus__AnnotationsEntry annotation_init =
		RUNTIME__V1__POD_SANDBOX_STATUS__ANNOTATIONS_ENTRY__INIT;
	static const Runtime__V1__PodSandboxStatusResponse__InfoEntry info_init =
		RUNTIME__V1__POD_SANDBOX_STATUS_RESPONSE__INFO_ENTRY__INIT;
	struct vg_map labels, annotations, info = { 0 };
	vg_map_from_json(sb->labels, &label_init, &labels);
	vg_map_from_json(sb->annotations, &annotation_init, &annotations);
	status.n_labels = labels.n;
	status.labels = (Runtime__V1__PodSandboxStatus__LabelsEntry **)labels.entries;
	status.n_annotations = annotations.n;
	status.annotations = (Runtime__V1__PodSandboxStatus__AnnotationsEntry **)annotations.entries;
	resp.status = &status;
	resp.timestamp = vg_now_ns();
	json_object *info_obj = NULL;
	if (req->verbose) {
		/* CRI info values are JSON documents: ours is one, under the key "vmgpu". */
		json_object *details = vg_sandbox_details(sb);
		info_obj = json_object_new_object();
		json_object_object_add(info_obj, "vmgpu", json_object_new_string(
								  json_object_to_json_string_ext(
									  details, JSON_C_TO_STRING_PLAIN)));
		json_object_put(details);
		vg_map_from_json(info_obj, &info_init, &info);
		resp.n_info = info.n;
		resp.info = (Runtime__V1__PodSandboxStatusResponse__InfoEntry **)info.entries;
	}
	vg_reply_message(call, &resp.base);
	vg_map_clear(&labels);
	vg_map_clear(&annotations);
	vg_map_clear(&info);
	json_object_put(info_obj);
	runtime__v1__pod_sandbox_status_request__free_unpacked(req, NULL);
}

static bool matches_filter(const struct vg_sandbox *sb, const Runtime__V1__PodSandboxFilter *f)
{
	if (f == NULL)
		return true;
	if (f->id && f->id[0] && strcmp(f->id, sb->id) != 0)
		return false;
	if (f->state && f->state->state != cri_state(sb))
		return false;
	for (size_t i = 0; i < f->n_label_selector; i++) {
		json_object *v;
		if (!json_object_object_get_ex(sb->labels, f->label_selector[i]->key, &v) ||
		    strcmp(json_object_get_string(v), f->label_selector[i]->value) != 0)
			return false;
	}
	return true;
}

static void on_list(void *ctx, struct vg_grpc_call *call, const uint8_t *data, size_t len)
{
	struct vg_sandboxes *mgr = ctx;
	Runtime__V1__ListPodSandboxRequest *req =
		UNPACK_OR_FAIL(Runtime__V1__ListPodSandboxRequest,
			       runtime__v1__list_pod_sandbox_request__unpack, call, data, len);
	if (req == NULL)
		return;
	size_t n = 0;
	for (struct vg_sandbox *sb = mgr->list; sb; sb = sb->next)
		n += matches_filter(sb, req->filter);
	Runtime__V1__PodSandbox *items = calloc(n ? n : 1, sizeof(*items));
	Runtime__V1__PodSandbox **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
	Runtime__V1__PodSandboxMetadata *metas = calloc(n ? n : 1, sizeof(*metas));
	struct vg_map *maps = calloc(n ? 2 * n : 1, sizeof(*maps));
	if (items == NULL || ptrs == NULL || metas == NULL || maps == NULL) {
		vg_grpc_call_fail(call, VG_GRPC_INTERNAL, "out of memory");
		n = 0;
	} else {
		static const Runtime__V1__PodSandbox__LabelsEntry label_init =
			RUNTIME__V1__POD_SANDBOX__LABELS_ENTRY__INIT;
		static const Runtime__V1__PodSandbox__AnnotationsEntry annotation_init =
			RUNTIME__V1__POD_SANDBOX__ANNOTATIONS_ENTRY__INIT;
		size_t i = 0;
		for (struct vg_sandbox *sb = mgr->list; sb && i < n; sb = sb->next) {
			if (!matches_filter(sb, req->filter))
				continue;
			runtime__v1__pod_sandbox__init(&items[i]);
			runtime__v1__pod_sandbox_metadata__init(&metas[i]);
			fill_metadata(sb, &metas[i]);
			items[i].id = sb->id;
			items[i].metadata = &metas[i];
			items[i].state = cri_state(sb);
			items[i].created_at = sb->created_ns;
			items[i].runtime_handler = sb->runtime_handler;
			vg_map_from_json(sb->labels, &label_init, &maps[2 * i]);
			vg_map_from_json(sb->annotations, &annotation_init, &maps[2 * i + 1]);
			items[i].n_labels = maps[2 * i].n;
			items[i].labels = (Runtime__V1__PodSandbox__LabelsEntry **)maps[2 * i].entries;
			items[i].n_annotations = maps[2 * i + 1].n;
			items[i].annotations =
				(Runtime__V1__PodSandbox__AnnotationsEntry **)maps[2 * i + 1].entries;
			ptrs[i] = &items[i];
			i++;
		}
		Runtime__V1__ListPodSandboxResponse resp =
			RUNTIME__V1__LIST_POD_SANDBOX_RESPONSE__INIT;
		resp.n_items = i;
		resp.items = ptrs;
		vg_reply_message(call, &resp.base);
	}
	for (size_t i = 0; maps && i < 2 * n; i++)
		vg_map_clear(&maps[i]);
	free(maps);
	free(metas);
	free(ptrs);
	free(items);
	runtime__v1__list_pod_sandbox_request__free_unpacked(req, NULL);
}

static void on_runtime_status(void *ctx, struct vg_grpc_call *call, const uint8_t *data,
			      size_t len)
{
	(void)ctx;
	Runtime__V1__StatusRequest *req = UNPACK_OR_FAIL(
		Runtime__V1__StatusRequest, runtime__v1__status_request__unpack, call, data, len);
	if (req == NULL)
		return;
	runtime__v1__status_request__free_unpacked(req, NULL);
	Runtime__V1__RuntimeCondition runtime = RUNTIME__V1__RUNTIME_CONDITION__INIT;
	Runtime__V1__RuntimeCondition network = RUNTIME__V1__RUNTIME_CONDITION__INIT;
	runtime.type = (char *)"RuntimeReady";
	runtime.status = 1;
	network.type = (char *)"NetworkReady";
	network.status = 1;
	Runtime__V1__RuntimeCondition *conditions[] = { &runtime, &network };
	Runtime__V1__RuntimeStatus status = RUNTIME__V1__RUNTIME_STATUS__INIT;
	status.n_conditions = 2;
	status.conditions = conditions;
	Runtime__V1__StatusResponse resp = RUNTIME__V1__STATUS_RESPONSE__INIT;
	resp.status = &status;
	vg_reply_message(call, &resp.base);
}

int vg_cri_service_register(struct vg_grpc_server *server, struct vg_sandboxes *sandboxes,
			    struct vg_error **err)
{
	static const struct {
		const char *method;
		vg_grpc_unary_fn fn;
	} methods[] = {
		{ VG_CRI_VERSION, on_version },
		{ VG_CRI_RUN_POD_SANDBOX, on_run },
		{ VG_CRI_STOP_POD_SANDBOX, on_stop },
		{ VG_CRI_REMOVE_POD_SANDBOX, on_remove },
		{ VG_CRI_POD_SANDBOX_STATUS, on_status },
		{ VG_CRI_LIST_POD_SANDBOX, on_list },
		{ VG_CRI_STATUS, on_runtime_status },
	};
	for (size_t i = 0; i < VG_ARRAY_SIZE(methods); i++) {
		int ret = vg_grpc_server_add_unary(server, methods[i].method, methods[i].fn,
						   sandboxes, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

#include "agent/sandbox_record.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/net_pool.h"
#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/error.h"

static const char *const state_names[] = { "creating", "ready", "stopping", "exited", "failed" };

const char *vg_sb_state_name(enum vg_sb_state state)
{
	return (size_t)state < VG_ARRAY_SIZE(state_names) ? state_names[state] : "unknown";
}

int vg_sb_state_parse(const char *text, enum vg_sb_state *out)
{
	for (size_t i = 0; text && i < VG_ARRAY_SIZE(state_names); i++) {
		if (strcmp(text, state_names[i]) == 0) {
			*out = (enum vg_sb_state)i;
			return 0;
		}
	}
	return -EINVAL;
}

static json_object *copy_or_empty(json_object *obj)
{
	json_object *copy = NULL;
	if (obj == NULL || json_object_deep_copy(obj, &copy, NULL) != 0)
		return json_object_new_object();
	return copy;
}

int vg_sandbox_record_save(const struct vg_sandbox *sb, struct vg_error **err)
{
	json_object *obj = json_object_new_object();
	json_object *meta = json_object_new_object();
	json_object_object_add(obj, "id", json_object_new_string(sb->id));
	json_object_object_add(meta, "name", json_object_new_string(sb->name));
	json_object_object_add(meta, "uid", json_object_new_string(sb->uid));
	json_object_object_add(meta, "namespace", json_object_new_string(sb->pod_namespace));
	json_object_object_add(meta, "attempt", json_object_new_int64(sb->attempt));
	json_object_object_add(obj, "metadata", meta);
	json_object_object_add(obj, "runtime_handler", json_object_new_string(sb->runtime_handler));
	json_object_object_add(obj, "labels", copy_or_empty(sb->labels));
	json_object_object_add(obj, "annotations", copy_or_empty(sb->annotations));
	json_object_object_add(obj, "created_ns", json_object_new_int64(sb->created_ns));
	json_object_object_add(obj, "state", json_object_new_string(vg_sb_state_name(sb->state)));
	json_object_object_add(obj, "reason", json_object_new_string(sb->reason));
	json_object *gpus = json_object_new_array();
	for (size_t i = 0; i < sb->n_gpus; i++)
		json_object_array_add(gpus, json_object_new_string(sb->gpus[i]));
	json_object_object_add(obj, "gpus", gpus);
	char subnet[16] = "";
	if (sb->has_net)
		vg_ipv4_format(sb->subnet, subnet);
	json_object_object_add(obj, "subnet", json_object_new_string(subnet));
	char path[4200];
	snprintf(path, sizeof(path), "%s/record.json", sb->dir);
	int ret = vg_atomic_write_str(path, json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY),
				      0600, err);
	json_object_put(obj);
	return ret;
}

static const char *get_string(json_object *obj, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
		return "";
	return json_object_get_string(v);
}

static int64_t get_int(json_object *obj, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(obj, key, &v) ? json_object_get_int64(v) : 0;
}

static json_object *load_json(const char *path, struct vg_error **err)
{
	cleanup_free char *text = NULL;
	if (vg_read_file(path, 1u << 20, &text, NULL, err) < 0)
		return NULL;
	json_object *obj = json_tokener_parse(text);
	if (obj == NULL || !json_object_is_type(obj, json_type_object)) {
		json_object_put(obj);
		vg_error_set(err, EINVAL, "%s is not a JSON object", path);
		return NULL;
	}
	return obj;
}

int vg_sandbox_record_load(const char *dir, struct vg_sandbox *sb, struct vg_error **err)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/record.json", dir);
	json_object *obj = load_json(path, err);
	if (obj == NULL)
		return -EINVAL;
	snprintf(sb->dir, sizeof(sb->dir), "%s", dir);
	snprintf(sb->id, sizeof(sb->id), "%s", get_string(obj, "id"));
	json_object *meta = NULL, *v = NULL;
	json_object_object_get_ex(obj, "metadata", &meta);
	snprintf(sb->name, sizeof(sb->name), "%s", get_string(meta, "name"));
	snprintf(sb->uid, sizeof(sb->uid), "%s", get_string(meta, "uid"));
	snprintf(sb->pod_namespace, sizeof(sb->pod_namespace), "%s", get_string(meta, "namespace"));
	sb->attempt = (uint32_t)get_int(meta, "attempt");
	snprintf(sb->runtime_handler, sizeof(sb->runtime_handler), "%s",
		 get_string(obj, "runtime_handler"));
	sb->labels = json_object_object_get_ex(obj, "labels", &v) ? copy_or_empty(v)
								    : json_object_new_object();
	sb->annotations = json_object_object_get_ex(obj, "annotations", &v)
				  ? copy_or_empty(v)
				  : json_object_new_object();
	sb->created_ns = get_int(obj, "created_ns");
	if (vg_sb_state_parse(get_string(obj, "state"), &sb->state) < 0)
		sb->state = VG_SB_FAILED;
	snprintf(sb->reason, sizeof(sb->reason), "%s", get_string(obj, "reason"));
	json_object *gpus = NULL;
	if (json_object_object_get_ex(obj, "gpus", &gpus) &&
	    json_object_is_type(gpus, json_type_array))
		for (size_t i = 0; i < json_object_array_length(gpus) && sb->n_gpus < 16; i++)
			snprintf(sb->gpus[sb->n_gpus++], VG_BDF_STRLEN, "%s",
				 json_object_get_string(json_object_array_get_idx(gpus, i)));
	const char *subnet = get_string(obj, "subnet");
	struct vg_net_pool parsed;
	char cidr[40];
	snprintf(cidr, sizeof(cidr), "%s/30", subnet);
	if (subnet[0] != '\0' && vg_net_pool_parse(cidr, &parsed, NULL) == 0) {
		sb->has_net = true;
		sb->subnet = parsed.base;
	}
	json_object_put(obj);
	if (sb->id[0] == '\0')
		return vg_error_set(err, EINVAL, "%s has no sandbox id", path);
	return 0;
}

int vg_sandbox_read_shim_status(struct vg_sandbox *sb)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/status.json", sb->dir);
	json_object *obj = load_json(path, NULL);
	if (obj == NULL)
		return -ENOENT;
	enum vg_sb_state state;
	if (vg_sb_state_parse(get_string(obj, "state"), &state) == 0)
		sb->state = state;
	snprintf(sb->reason, sizeof(sb->reason), "%s", get_string(obj, "reason"));
	sb->shim_pid = (pid_t)get_int(obj, "shim_pid");
	sb->shim_start_time = (uint64_t)get_int(obj, "shim_start_time");
	sb->qemu_pid = (pid_t)get_int(obj, "qemu_pid");
	snprintf(sb->tap, sizeof(sb->tap), "%s", get_string(obj, "tap"));
	json_object_put(obj);
	return 0;
}

bool vg_sandbox_has_exit_record(const struct vg_sandbox *sb)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/exit.json", sb->dir);
	return access(path, F_OK) == 0;
}

json_object *vg_sandbox_details(const struct vg_sandbox *sb)
{
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "state", json_object_new_string(vg_sb_state_name(sb->state)));
	json_object_object_add(obj, "reason", json_object_new_string(sb->reason));
	json_object *gpus = json_object_new_array();
	for (size_t i = 0; i < sb->n_gpus; i++)
		json_object_array_add(gpus, json_object_new_string(sb->gpus[i]));
	json_object_object_add(obj, "gpus", gpus);
	json_object_object_add(obj, "tap", json_object_new_string(sb->tap));
	char host[16] = "", guest[16] = "";
	if (sb->has_net) {
		vg_ipv4_format(sb->subnet + 1, host);
		vg_ipv4_format(sb->subnet + 2, guest);
	}
	json_object_object_add(obj, "host_ip", json_object_new_string(host));
	json_object_object_add(obj, "guest_ip", json_object_new_string(guest));
	char log[4200];
	snprintf(log, sizeof(log), "%s/console.log", sb->dir);
	json_object_object_add(obj, "console_log", json_object_new_string(log));
	json_object_object_add(obj, "dir", json_object_new_string(sb->dir));
	json_object_object_add(obj, "shim_pid", json_object_new_int(sb->shim_pid));
	json_object_object_add(obj, "qemu_pid", json_object_new_int(sb->qemu_pid));
	return obj;
}

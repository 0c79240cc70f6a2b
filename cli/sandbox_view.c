#include "cli/sandbox_view.h"

#include <stdlib.h>
#include <string.h>

#include "cli/proto_json.h"

static const char *info_value(const Runtime__V1__PodSandboxStatusResponse *response,
			      const char *key)
{
	for (size_t i = 0; i < response->n_info; i++)
		if (response->info[i]->key && strcmp(response->info[i]->key, key) == 0)
			return response->info[i]->value;
	return NULL;
}

static const char *string_key(json_object *obj, const char *key)
{
	json_object *value;
	if (obj == NULL || !json_object_object_get_ex(obj, key, &value) ||
	    !json_object_is_type(value, json_type_string))
		return "";
	return json_object_get_string(value);
}

static long long int_key(json_object *obj, const char *key)
{
	json_object *value;
	if (obj == NULL || !json_object_object_get_ex(obj, key, &value) ||
	    !json_object_is_type(value, json_type_int))
		return 0;
	return json_object_get_int64(value);
}

static char *join_gpus(json_object *vmgpu, size_t *count)
{
	json_object *gpus;
	*count = 0;
	if (vmgpu == NULL || !json_object_object_get_ex(vmgpu, "gpus", &gpus) ||
	    !json_object_is_type(gpus, json_type_array))
		return strdup("");
	size_t n = json_object_array_length(gpus), len = 0;
	for (size_t i = 0; i < n; i++)
		len += strlen(json_object_get_string(json_object_array_get_idx(gpus, i))) + 1;
	char *joined = malloc(len + 1);
	if (joined == NULL)
		return NULL;
	joined[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (i)
			strcat(joined, ",");
		strcat(joined, json_object_get_string(json_object_array_get_idx(gpus, i)));
	}
	*count = n;
	return joined;
}

void vg_sandbox_view_init(struct vg_sandbox_view *view,
			  const Runtime__V1__PodSandboxStatusResponse *response)
{
	memset(view, 0, sizeof(*view));
	const char *text = info_value(response, "vmgpu");
	if (text) {
		view->vmgpu = json_tokener_parse(text);
		if (view->vmgpu && !json_object_is_type(view->vmgpu, json_type_object)) {
			json_object_put(view->vmgpu);
			view->vmgpu = NULL;
		}
	}
	view->state = string_key(view->vmgpu, "state");
	if (view->state[0] == '\0') {
		const Runtime__V1__PodSandboxStatus *status = response->status;
		view->state = status == NULL ? "unknown"
			      : status->state == RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_READY
				      ? "ready"
				      : "notready";
	}
	view->reason = string_key(view->vmgpu, "reason");
	view->tap = string_key(view->vmgpu, "tap");
	view->host_ip = string_key(view->vmgpu, "host_ip");
	view->guest_ip = string_key(view->vmgpu, "guest_ip");
	if (view->guest_ip[0] == '\0' && response->status && response->status->network)
		view->guest_ip = response->status->network->ip; /* CRI's own field says the same */
	view->console_log = string_key(view->vmgpu, "console_log");
	view->dir = string_key(view->vmgpu, "dir");
	view->shim_pid = int_key(view->vmgpu, "shim_pid");
	view->qemu_pid = int_key(view->vmgpu, "qemu_pid");
	view->gpus = join_gpus(view->vmgpu, &view->n_gpus);
}

void vg_sandbox_view_clear(struct vg_sandbox_view *view)
{
	json_object_put(view->vmgpu);
	free(view->gpus);
	memset(view, 0, sizeof(*view));
}

bool vg_sandbox_state_is_final(const char *state)
{
	return strcmp(state, "exited") == 0 || strcmp(state, "failed") == 0;
}

json_object *vg_sandbox_status_to_json(const Runtime__V1__PodSandboxStatusResponse *response)
{
	json_object *obj = vg_proto_to_json(&response->base);
	json_object *info;
	if (obj == NULL || !json_object_object_get_ex(obj, "info", &info))
		return obj;
	/* CRI carries info values as JSON text; a reader wants them as objects. */
	for (size_t i = 0; i < response->n_info; i++) {
		const char *key = response->info[i]->key;
		json_object *decoded = json_tokener_parse(response->info[i]->value);
		if (key && decoded)
			json_object_object_add(info, key, decoded);
		else
			json_object_put(decoded);
	}
	return obj;
}

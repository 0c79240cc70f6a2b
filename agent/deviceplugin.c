/*
 * Endpoints, registration and restarts of the kubelet device plugin. The RPC handlers are in
 * deviceplugin_rpc.c. Everything runs on the loop thread.
 *
 * An endpoint goes: down -> serving (our socket answers) -> registered. A kubelet restart
 * deletes our socket and serves kubelet.sock anew; either event sends the endpoint back to
 * down (when its socket is gone) or to serving (when only the kubelet is new), with backoff
 * on failures. Calls and timers carry the endpoint's epoch, bumped at each restart, so the
 * answer of a call made for an older server is recognised and dropped.
 */
#include "agent/deviceplugin.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "agent/deviceplugin-priv.h"
#include "agent/device_table.h"
#include "agent/kubelet_watch.h"
#include "agent/podresources.h"
#include "deviceplugin/v1beta1/api.pb-c.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/log.h"
#include "lib/process.h"
#include "method_paths.h"

#define WATCH_INTERVAL_MS 5000	/* the safety net's stat, besides inotify */
#define HOLDS_SYNC_MS 10000	/* PodResources List, to learn which GPUs the kubelet gave pods */
#define ALLOCATE_GRACE_MS 60000 /* an Allocate's hold survives Lists that miss it this long */
#define SELF_CHECK_TIMEOUT_MS 5000
#define REGISTER_TIMEOUT_MS 15000 /* the kubelet dials us back within Register, for up to 10 s */
#define BACKOFF_FIRST_MS 250
#define BACKOFF_MAX_MS 16000
#define LOCK_RETRY_MS 50 /* our previous server lets go of the socket within its 2 s grace */

/* ---- naming ---- */

static void model_of(const struct vg_gpu *gpu, char out[64])
{
	size_t n = 0;
	bool gap = false;
	for (const char *p = gpu->name; gpu->name_from_pci_ids && *p; p++) {
		if (!isalnum((unsigned char)*p) || !isascii((unsigned char)*p)) {
			gap = true;
			continue;
		}
		if (n + (gap && n > 0) + 1 > 63)
			break;
		if (gap && n > 0)
			out[n++] = '_';
		out[n++] = *p;
		gap = false;
	}
	out[n] = '\0';
	if (n == 0) /* no pci.ids name: the ids are still a stable model */
		snprintf(out, 64, "pci-%04x-%04x", gpu->fn.vendor_id, gpu->fn.device_id);
}

void vg_resource_name_of(const struct vg_config *config, const struct vg_gpu *gpu,
			 char out[VG_RESOURCE_NAME_MAX])
{
	if (config->resource_naming == VG_RESOURCE_SINGLE) {
		snprintf(out, VG_RESOURCE_NAME_MAX, "%s", config->resource_name);
		return;
	}
	char model[64], ids[16];
	model_of(gpu, model);
	snprintf(ids, sizeof(ids), "%04x:%04x", gpu->fn.vendor_id, gpu->fn.device_id);
	const char *name = model;
	for (size_t i = 0; i < config->n_resource_aliases; i++) {
		const struct vg_resource_alias *alias = &config->resource_aliases[i];
		if (strcasecmp(alias->model, model) == 0 || strcasecmp(alias->model, ids) == 0)
			name = alias->name;
	}
	if (strchr(name, '/') != NULL) {
		snprintf(out, VG_RESOURCE_NAME_MAX, "%s", name);
		return;
	}
	int domain_len = (int)strcspn(config->resource_name, "/");
	snprintf(out, VG_RESOURCE_NAME_MAX, "%.*s/%.63s", domain_len, config->resource_name, name);
}

static void socket_name_of(const struct vg_config *config, const char *resource, char *out,
			   size_t size)
{
	if (config->resource_naming == VG_RESOURCE_SINGLE) {
		snprintf(out, size, "vmgpu.sock");
		return;
	}
	const char *name = strchr(resource, '/') + 1;
	size_t n = (size_t)snprintf(out, size, "vmgpu-");
	for (const char *p = name; *p && n + 6 < size; p++) {
		char c = (char)tolower((unsigned char)*p);
		out[n++] = (isalnum((unsigned char)c) || c == '.' || c == '_') ? c : '-';
	}
	snprintf(out + n, size - n, ".sock");
}

/* ---- endpoints ---- */

static struct endpoint *endpoint_find(struct vg_device_plugin *dp, const char *resource)
{
	for (struct endpoint *ep = dp->endpoints; ep; ep = ep->next)
		if (strcmp(ep->resource, resource) == 0)
			return ep;
	return NULL;
}

static struct endpoint *endpoint_new(struct vg_device_plugin *dp, const char *resource)
{
	struct endpoint *ep = calloc(1, sizeof(*ep));
	if (ep == NULL)
		return NULL;
	ep->dp = dp;
	snprintf(ep->resource, sizeof(ep->resource), "%s", resource);
	socket_name_of(dp->config, resource, ep->socket_name, sizeof(ep->socket_name));
	snprintf(ep->socket_path, sizeof(ep->socket_path), "%s/%s", dp->config->kubelet_dir,
		 ep->socket_name);
	snprintf(ep->lock_path, sizeof(ep->lock_path), "%s/%s.lock", dp->lock_dir, ep->socket_name);
	ep->next = dp->endpoints;
	dp->endpoints = ep;
	return ep;
}

/* Kept in BDF order; a GPU stays listed (Unhealthy) after it vanished. */
static int endpoint_know(struct endpoint *ep, const struct vg_gpu *gpu)
{
	size_t at = 0;
	while (at < ep->n_known && strcmp(ep->known[at].bdf, gpu->fn.bdf) < 0)
		at++;
	if (at < ep->n_known && strcmp(ep->known[at].bdf, gpu->fn.bdf) == 0) {
		ep->known[at].numa_node = gpu->numa_node;
		return 0;
	}
	struct known_gpu *known = realloc(ep->known, (ep->n_known + 1) * sizeof(*known));
	if (known == NULL)
		return -ENOMEM;
	ep->known = known;
	memmove(&known[at + 1], &known[at], (ep->n_known - at) * sizeof(*known));
	snprintf(known[at].bdf, sizeof(known[at].bdf), "%s", gpu->fn.bdf);
	known[at].numa_node = gpu->numa_node;
	ep->n_known++;
	return 0;
}

/* ---- serving and registering ---- */

static void endpoint_serve(struct endpoint *ep);
static void endpoint_register(struct endpoint *ep);

static void on_endpoint_timer(void *ctx)
{
	struct endpoint *ep = ctx;
	ep->timer = 0;
	if (ep->dp->stopping)
		return;
	if (ep->server == NULL)
		endpoint_serve(ep);
	else if (!ep->registered)
		endpoint_register(ep);
}

static void endpoint_retry(struct endpoint *ep, int delay_ms)
{
	if (ep->timer)
		vg_grpc_loop_cancel_timer(ep->dp->loop, ep->timer);
	ep->timer = vg_grpc_loop_add_timer(ep->dp->loop, delay_ms, on_endpoint_timer, ep);
}

static int next_backoff(struct endpoint *ep)
{
	ep->backoff_ms = ep->backoff_ms ? ep->backoff_ms * 2 : BACKOFF_FIRST_MS;
	if (ep->backoff_ms > BACKOFF_MAX_MS)
		ep->backoff_ms = BACKOFF_MAX_MS;
	return ep->backoff_ms;
}

static bool endpoint_socket_is_ours(const struct endpoint *ep)
{
	struct stat st;
	return lstat(ep->socket_path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == ep->dev &&
	       st.st_ino == ep->ino && st.st_ctim.tv_sec == ep->ctime.tv_sec &&
	       st.st_ctim.tv_nsec == ep->ctime.tv_nsec;
}

static void endpoint_shutdown(struct endpoint *ep)
{
	if (ep->timer)
		vg_grpc_loop_cancel_timer(ep->dp->loop, ep->timer);
	ep->timer = 0;
	if (ep->server != NULL)
		vg_grpc_server_shutdown(ep->server); /* its ListAndWatch streams end: UNAVAILABLE */
	ep->server = NULL;
	ep->epoch++;
	ep->registered = ep->registering = ep->register_again = false;
}

static void endpoint_restart(struct endpoint *ep, const char *why)
{
	vg_info("device plugin %s: %s; serving %s again and registering again", ep->resource, why,
		ep->socket_path);
	endpoint_shutdown(ep);
	ep->restart_ns = vg_monotonic_ns();
	ep->backoff_ms = 0;
	endpoint_serve(ep);
}

static void endpoint_serve(struct endpoint *ep)
{
	struct vg_device_plugin *dp = ep->dp;
	if (dp->stopping || ep->server != NULL || !dp->dir_present)
		return; /* the directory coming back starts it */
	cleanup_error struct vg_error *err = NULL;
	struct vg_grpc_server *server = NULL;
	int ret = vg_grpc_server_new_locked_at(dp->loop, ep->socket_path, ep->lock_path, 0600,
					       &server, &err);
	if (ret == -EADDRINUSE && ep->lock_waits++ < 100) {
		/* Our previous server holds the path while its calls end (2 s grace at most);
		 * past 5 s it is another agent, and the backoff below applies. */
		endpoint_retry(ep, LOCK_RETRY_MS);
		return;
	}
	if (ret == 0)
		ret = dp_register_methods(ep, server, &err);
	if (ret == 0)
		ret = vg_grpc_server_start(server, &err);
	if (ret < 0) {
		if (server != NULL)
			vg_grpc_server_shutdown(server);
		int delay = next_backoff(ep);
		vg_warn("device plugin %s: cannot serve on %s: %s; trying again in %d ms",
			ep->resource, ep->socket_path, err->msg, delay);
		endpoint_retry(ep, delay);
		return;
	}
	struct stat st;
	if (lstat(ep->socket_path, &st) == 0) {
		ep->dev = st.st_dev;
		ep->ino = st.st_ino;
		ep->ctime = st.st_ctim;
	}
	ep->server = server;
	ep->lock_waits = 0;
	ep->epoch++;
	vg_info("device plugin %s: serving on %s", ep->resource, ep->socket_path);
	endpoint_register(ep);
}

struct register_call {
	struct endpoint *ep;
	uint64_t epoch;
};

/* The call's endpoint, or NULL when the endpoint restarted since (the answer is stale). */
static struct endpoint *register_call_end(void *ctx)
{
	struct register_call *rc = ctx;
	struct endpoint *ep = rc->epoch == rc->ep->epoch ? rc->ep : NULL;
	free(rc);
	return ep;
}

static void register_failed(struct endpoint *ep, const char *what, const struct vg_grpc_reply *r)
{
	ep->registering = false;
	if (r->code == VG_GRPC_CANCELLED)
		return; /* the agent is stopping */
	int delay = next_backoff(ep);
	vg_warn("device plugin %s: %s failed (gRPC code %d: %s); trying again in %d ms",
		ep->resource, what, (int)r->code, r->details ? r->details : "", delay);
	endpoint_retry(ep, delay);
}

static void on_registered(void *ctx, struct vg_grpc_reply *reply)
{
	struct endpoint *ep = register_call_end(ctx);
	if (ep == NULL)
		return;
	if (reply->code != VG_GRPC_OK) {
		register_failed(ep, "Register with the kubelet", reply);
		return;
	}
	ep->registering = false;
	if (ep->register_again) { /* the kubelet restarted while we were registering */
		ep->register_again = false;
		endpoint_register(ep);
		return;
	}
	ep->registered = true;
	ep->backoff_ms = 0;
	vg_info("device plugin %s: registered with the kubelet as %s (%.0f ms after the (re)start)",
		ep->resource, ep->socket_name, (double)(vg_monotonic_ns() - ep->restart_ns) / 1e6);
}

static int call_for(struct endpoint *ep, const char *socket, const char *method,
		    const ProtobufCMessage *msg, int timeout_ms,
		    void (*done)(void *, struct vg_grpc_reply *), struct vg_error **err)
{
	struct register_call *rc = malloc(sizeof(*rc));
	size_t len = protobuf_c_message_get_packed_size(msg);
	cleanup_free uint8_t *buf = malloc(len ? len : 1);
	if (rc == NULL || buf == NULL) {
		free(rc);
		return vg_error_set(err, ENOMEM, "out of memory");
	}
	protobuf_c_message_pack(msg, buf);
	*rc = (struct register_call){ ep, ep->epoch };
	int ret = vg_grpc_loop_call(ep->dp->loop, socket, method, buf, len, timeout_ms, false, done,
				    rc, err);
	if (ret < 0)
		free(rc);
	return ret;
}

/* Our own socket answered: now the kubelet may dial it back from inside Register. */
static void on_self_check(void *ctx, struct vg_grpc_reply *reply)
{
	struct endpoint *ep = register_call_end(ctx);
	if (ep == NULL)
		return;
	if (reply->code != VG_GRPC_OK) {
		register_failed(ep, "GetDevicePluginOptions on our own socket", reply);
		return;
	}
	V1beta1__DevicePluginOptions options = V1BETA1__DEVICE_PLUGIN_OPTIONS__INIT;
	options.pre_start_required = false;
	options.get_preferred_allocation_available = true;
	V1beta1__RegisterRequest req = V1BETA1__REGISTER_REQUEST__INIT;
	req.version = (char *)"v1beta1";
	req.endpoint = ep->socket_name;
	req.resource_name = ep->resource;
	req.options = &options;
	cleanup_error struct vg_error *err = NULL;
	if (call_for(ep, ep->dp->kubelet_socket, VG_DP_REGISTER, &req.base, REGISTER_TIMEOUT_MS,
		     on_registered, &err) < 0) {
		ep->registering = false;
		vg_warn("device plugin %s: cannot call Register: %s", ep->resource, err->msg);
		endpoint_retry(ep, next_backoff(ep));
	}
}

static void endpoint_register(struct endpoint *ep)
{
	struct vg_device_plugin *dp = ep->dp;
	if (dp->stopping || ep->server == NULL || ep->registered)
		return;
	if (ep->registering) {
		ep->register_again = true;
		return;
	}
	struct stat st;
	if (stat(dp->kubelet_socket, &st) < 0 || !S_ISSOCK(st.st_mode)) {
		/* The watch reports kubelet.sock being created; no polling meanwhile. */
		if (!ep->said_waiting)
			vg_info("device plugin %s: no kubelet at %s yet; registering once it "
				"appears",
				ep->resource, dp->kubelet_socket);
		ep->said_waiting = true;
		return;
	}
	ep->said_waiting = false;
	ep->registering = true;
	V1beta1__Empty empty = V1BETA1__EMPTY__INIT;
	cleanup_error struct vg_error *err = NULL;
	if (call_for(ep, ep->socket_path, VG_DP_GET_DEVICE_PLUGIN_OPTIONS, &empty.base,
		     SELF_CHECK_TIMEOUT_MS, on_self_check, &err) < 0) {
		ep->registering = false;
		vg_warn("device plugin %s: cannot dial our own socket: %s", ep->resource, err->msg);
		endpoint_retry(ep, next_backoff(ep));
	}
}

/* ---- the kubelet's holds, from PodResources ---- */

static void on_holds_listed(void *ctx, const struct vg_pod_gpus *gpus, const struct vg_error *err)
{
	struct vg_device_plugin *dp = ctx;
	dp->holds_in_flight = false;
	if (dp->stopping)
		return;
	if (err != NULL) {
		vg_debug("device plugin: kubelet holds not refreshed: %s", err->msg);
		return;
	}
	vg_podresources_apply_holds(dp->table, gpus, ALLOCATE_GRACE_MS);
	dp->changed(dp->changed_ctx);
}

static void sync_holds(struct vg_device_plugin *dp)
{
	if (dp->holds_in_flight ||
	    !vg_podresources_socket_present(dp->config->pod_resources_socket))
		return;
	cleanup_error struct vg_error *err = NULL;
	if (vg_podresources_all_gpus(dp->loop, dp->config, dp->table, on_holds_listed, dp, &err) <
	    0)
		vg_warn("device plugin: cannot ask PodResources: %s", err->msg);
	else
		dp->holds_in_flight = true;
}

static void on_holds_timer(void *ctx)
{
	struct vg_device_plugin *dp = ctx;
	dp->holds_timer = vg_grpc_loop_add_timer(dp->loop, HOLDS_SYNC_MS, on_holds_timer, dp);
	sync_holds(dp);
}

/* ---- kubelet events ---- */

static void on_kubelet_event(void *ctx, enum vg_kubelet_event event)
{
	struct vg_device_plugin *dp = ctx;
	if (dp->stopping)
		return;
	if (event == VG_KUBELET_DIR_BACK || event == VG_KUBELET_DIR_GONE)
		dp->dir_present = event == VG_KUBELET_DIR_BACK;
	for (struct endpoint *ep = dp->endpoints; ep; ep = ep->next) {
		switch (event) {
		case VG_KUBELET_DIR_BACK:
			ep->restart_ns = vg_monotonic_ns();
			endpoint_serve(ep);
			break;
		case VG_KUBELET_DIR_GONE:
			endpoint_shutdown(ep);
			break;
		case VG_KUBELET_STARTED:
			if (ep->server != NULL && endpoint_socket_is_ours(ep)) {
				ep->registered = false;
				ep->backoff_ms = 0;
				ep->restart_ns = vg_monotonic_ns();
				if (ep->timer)
					vg_grpc_loop_cancel_timer(dp->loop, ep->timer);
				ep->timer = 0;
				endpoint_register(ep);
			} else if (ep->server != NULL) {
				endpoint_restart(ep,
						 "the kubelet restarted and our socket is gone");
			}
			break;
		case VG_KUBELET_SOCKET_REMOVED:
		case VG_KUBELET_TICK:
			if (ep->server != NULL && !endpoint_socket_is_ours(ep))
				endpoint_restart(ep, "our socket was removed (a kubelet restart)");
			else if (event == VG_KUBELET_TICK && !ep->timer && !ep->registering &&
				 !ep->registered)
				on_endpoint_timer(ep);
			break;
		}
	}
	if (event == VG_KUBELET_STARTED)
		sync_holds(dp);
}

/* ---- the plugin ---- */

void vg_device_plugin_publish(struct vg_device_plugin *dp)
{
	if (dp == NULL)
		return;
	const struct vg_inventory *inv = dp->table->scan.inventory;
	for (size_t i = 0; inv != NULL && i < inv->n_gpus; i++) {
		char resource[VG_RESOURCE_NAME_MAX];
		vg_resource_name_of(dp->config, &inv->gpus[i], resource);
		struct endpoint *ep = endpoint_find(dp, resource);
		if (ep == NULL) {
			ep = endpoint_new(dp, resource);
			if (ep == NULL) {
				vg_err("device plugin: out of memory for resource %s", resource);
				continue;
			}
			ep->restart_ns = vg_monotonic_ns();
			endpoint_serve(ep);
		}
		if (endpoint_know(ep, &inv->gpus[i]) < 0)
			vg_err("device plugin %s: out of memory for GPU %s", resource,
			       inv->gpus[i].fn.bdf);
	}
	for (struct endpoint *ep = dp->endpoints; ep; ep = ep->next)
		dp_endpoint_send_list(ep, false);
}

int vg_device_plugin_start(const struct vg_config *config, struct vg_grpc_loop *loop,
			   struct vg_device_table *table, void (*changed)(void *ctx), void *ctx,
			   struct vg_device_plugin **out, struct vg_error **err)
{
	*out = NULL;
	if (config->kubelet_dir[0] == '\0') {
		vg_info("device plugin: off (kubelet_dir is empty)");
		return 0;
	}
	struct vg_device_plugin *dp = calloc(1, sizeof(*dp));
	if (dp == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	dp->config = config;
	dp->loop = loop;
	dp->table = table;
	dp->changed = changed;
	dp->changed_ctx = ctx;
	snprintf(dp->kubelet_socket, sizeof(dp->kubelet_socket), "%s/kubelet.sock",
		 config->kubelet_dir);
	/* Our locks live in our state directory: the kubelet deletes files in its own. */
	snprintf(dp->lock_dir, sizeof(dp->lock_dir), "%s/device-plugins", config->state_dir);
	if (mkdir(dp->lock_dir, 0700) < 0 && errno != EEXIST) {
		int ret = vg_error_set_errno(err, errno, "create %s", dp->lock_dir);
		free(dp);
		return ret;
	}
	/* Endpoints first, so the directory being there (now or later) starts each of them. */
	vg_device_plugin_publish(dp);
	int ret = vg_kubelet_watch_start(loop, config->kubelet_dir, WATCH_INTERVAL_MS,
					 on_kubelet_event, dp, &dp->watch, err);
	if (ret < 0) {
		vg_device_plugin_free(dp);
		return ret;
	}
	dp->holds_timer = vg_grpc_loop_add_timer(loop, 0, on_holds_timer, dp);
	*out = dp;
	return 0;
}

void vg_device_plugin_stop(struct vg_device_plugin *dp)
{
	if (dp == NULL || dp->stopping)
		return;
	dp->stopping = true;
	vg_kubelet_watch_free(dp->watch);
	dp->watch = NULL;
	if (dp->holds_timer)
		vg_grpc_loop_cancel_timer(dp->loop, dp->holds_timer);
	dp->holds_timer = 0;
	for (struct endpoint *ep = dp->endpoints; ep; ep = ep->next) {
		if (ep->timer)
			vg_grpc_loop_cancel_timer(dp->loop, ep->timer);
		ep->timer = 0;
		ep->epoch++; /* answers still on the way are dropped */
	}
}

void vg_device_plugin_free(struct vg_device_plugin *dp)
{
	if (dp == NULL)
		return;
	/* The loop shut our servers down (and may have freed them): never touch them here. */
	vg_device_plugin_stop(dp);
	while (dp->endpoints != NULL) {
		struct endpoint *ep = dp->endpoints;
		dp->endpoints = ep->next;
		while (ep->streams != NULL) {
			struct lw_stream *s = ep->streams;
			ep->streams = s->next;
			free(s);
		}
		free(ep->known);
		free(ep->list);
		free(ep);
	}
	free(dp);
}

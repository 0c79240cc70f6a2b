/* A small Kubernetes REST client on libcurl and json-c. One client belongs to one thread; only
 * vg_kube_client_cancel may be called from another. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>

#include "lib/kube/kube_endpoint.h"

struct vg_error;
struct vg_kube_client;

struct vg_kube_client_options {
	long timeout_ms; /* the whole request, connect included; 0: 10 s */
	long connect_timeout_ms; /* 0: 5 s */
	const char *user_agent; /* NULL: "vmgpu/<version>" */
};

/* An HTTP answer: any status. body is the parsed JSON, or NULL when there was none or it was
 * not JSON (text then holds its start, for error messages). */
struct vg_kube_reply {
	long status;
	json_object *body;
	char text[256];
};

#define VG_KUBE_MERGE_PATCH "application/merge-patch+json"
#define VG_KUBE_JSON "application/json"

/* Takes over *ep (it is cleared), also on failure. */
int vg_kube_client_new(struct vg_kube_endpoint *ep, const struct vg_kube_client_options *opts,
		       struct vg_kube_client **out, struct vg_error **err);
void vg_kube_client_free(struct vg_kube_client *client);
/* From any thread: the request in progress, and every later one, fail with ECANCELED. */
void vg_kube_client_cancel(struct vg_kube_client *client);

/* One request to server + path, with body (JSON text, or NULL) sent as content_type. A 401
 * with a token file re-reads the token and, when it changed, sends the request once more.
 * Returns 0 once any HTTP answer arrived; <0 for no answer (ETIMEDOUT, ECONNREFUSED, EPROTO
 * for TLS, ECANCELED) or for a 2xx answer whose body is not JSON (EBADMSG). */
int vg_kube_request(struct vg_kube_client *client, const char *method, const char *path,
		    const char *content_type, const char *body, struct vg_kube_reply *reply,
		    struct vg_error **err);
void vg_kube_reply_clear(struct vg_kube_reply *reply);
/* 0 for a 2xx reply; otherwise an error naming the request, the status and the API server's
 * message, with an errno that fits (ENOENT for 404, EACCES for 401/403, EEXIST for 409...). */
int vg_kube_reply_check(const struct vg_kube_reply *reply, const char *method, const char *path,
			struct vg_error **err);
/* A 404 that is a Status about a missing object, not an API the server does not serve. */
bool vg_kube_reply_is_missing_object(const struct vg_kube_reply *reply);

/* Request and check in one: the parsed 2xx body in *ret_body (may be NULL). */
int vg_kube_call(struct vg_kube_client *client, const char *method, const char *path,
		 const char *content_type, const char *body, json_object **ret_body,
		 struct vg_error **err);

#include "lib/kube/kube_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/error.h"

/* A list or an object with many fields stays well below this; more means a wrong server. */
#define MAX_BODY (16u << 20)

struct vg_kube_client {
	struct vg_kube_endpoint ep;
	CURL *curl; /* kept between requests so the TLS connection is reused */
	long timeout_ms;
	long connect_timeout_ms;
	char user_agent[64];
	atomic_bool cancelled;
	char curl_error[CURL_ERROR_SIZE];
};

struct body_buffer {
	char *data;
	size_t len;
	size_t cap;
	bool too_big;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void)
{
	curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t on_body_data(char *ptr, size_t size, size_t nmemb, void *ctx)
{
	struct body_buffer *buf = ctx;
	size_t n = size * nmemb;
	if (buf->len + n > MAX_BODY) {
		buf->too_big = true;
		return 0; /* libcurl stops with CURLE_WRITE_ERROR */
	}
	if (buf->len + n + 1 > buf->cap) {
		size_t cap = buf->cap ? buf->cap : 4096;
		while (cap < buf->len + n + 1)
			cap *= 2;
		char *grown = realloc(buf->data, cap);
		if (grown == NULL)
			return 0;
		buf->data = grown;
		buf->cap = cap;
	}
	memcpy(buf->data + buf->len, ptr, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
	return n;
}

/* libcurl calls this at least once a second, also while waiting: cancel takes effect then. */
static int on_progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	(void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
	struct vg_kube_client *client = ctx;
	return atomic_load(&client->cancelled) ? 1 : 0;
}

static int set_blob(CURL *curl, CURLoption option, const struct vg_kube_pem *pem)
{
	struct curl_blob blob = { .data = pem->data, .len = pem->len, .flags = CURL_BLOB_COPY };
	return curl_easy_setopt(curl, option, &blob) == CURLE_OK ? 0 : -1;
}

static int setup_tls(struct vg_kube_client *client, struct vg_error **err)
{
	CURL *curl = client->curl;
	const struct vg_kube_endpoint *ep = &client->ep;
	int bad = 0;
	if (ep->insecure) {
		bad |= curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L) != CURLE_OK;
		bad |= curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L) != CURLE_OK;
	} else if (ep->ca_file[0] != '\0') {
		bad |= curl_easy_setopt(curl, CURLOPT_CAINFO, ep->ca_file) != CURLE_OK;
		/* Only the cluster's CA is trusted, never the host's bundle directory. */
		bad |= curl_easy_setopt(curl, CURLOPT_CAPATH, NULL) != CURLE_OK;
	} else if (ep->ca_pem.data != NULL) {
		bad |= set_blob(curl, CURLOPT_CAINFO_BLOB, &ep->ca_pem);
		bad |= curl_easy_setopt(curl, CURLOPT_CAPATH, NULL) != CURLE_OK;
	}
	if (ep->cert_file[0] != '\0') {
		bad |= curl_easy_setopt(curl, CURLOPT_SSLCERT, ep->cert_file) != CURLE_OK;
		bad |= curl_easy_setopt(curl, CURLOPT_SSLKEY, ep->key_file) != CURLE_OK;
	} else if (ep->cert_pem.data != NULL) {
		bad |= set_blob(curl, CURLOPT_SSLCERT_BLOB, &ep->cert_pem);
		bad |= set_blob(curl, CURLOPT_SSLKEY_BLOB, &ep->key_pem);
	}
	if (bad)
		return vg_error_set(err, ENOTSUP,
				    "libcurl refused a TLS option (a CA or client certificate "
				    "given as data needs libcurl 7.77 or newer with OpenSSL)");
	return 0;
}

int vg_kube_client_new(struct vg_kube_endpoint *ep, const struct vg_kube_client_options *opts,
		       struct vg_kube_client **out, struct vg_error **err)
{
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_result != CURLE_OK) {
		vg_kube_endpoint_clear(ep);
		return vg_error_set(err, EIO, "libcurl: %s", curl_easy_strerror(curl_init_result));
	}
	struct vg_kube_client *client = calloc(1, sizeof(*client));
	if (client == NULL) {
		vg_kube_endpoint_clear(ep);
		return vg_error_set(err, ENOMEM, "out of memory");
	}
	client->ep = *ep;
	memset(ep, 0, sizeof(*ep));
	client->timeout_ms = opts && opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
	client->connect_timeout_ms =
		opts && opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
	snprintf(client->user_agent, sizeof(client->user_agent), "%s",
		 opts && opts->user_agent ? opts->user_agent : "vmgpu/" VMGPU_VERSION);
	atomic_init(&client->cancelled, false);
	client->curl = curl_easy_init();
	if (client->curl == NULL) {
		vg_kube_client_free(client);
		return vg_error_set(err, ENOMEM, "libcurl: cannot create a handle");
	}
	CURL *curl = client->curl;
	int bad = 0;
	/* Signals would hit whichever thread runs; the agent has several. */
	bad |= curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https,http") != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, client->timeout_ms) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, client->connect_timeout_ms) !=
	       CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_USERAGENT, client->user_agent) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, client->curl_error) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_XFERINFODATA, client) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body_data) != CURLE_OK;
	if (bad) {
		vg_kube_client_free(client);
		return vg_error_set(err, ENOTSUP, "libcurl refused a basic option");
	}
	int ret = setup_tls(client, err);
	if (ret < 0) {
		vg_kube_client_free(client);
		return ret;
	}
	*out = client;
	return 0;
}

void vg_kube_client_free(struct vg_kube_client *client)
{
	if (client == NULL)
		return;
	if (client->curl != NULL)
		curl_easy_cleanup(client->curl);
	vg_kube_endpoint_clear(&client->ep);
	free(client);
}

void vg_kube_client_cancel(struct vg_kube_client *client)
{
	atomic_store(&client->cancelled, true);
}

void vg_kube_reply_clear(struct vg_kube_reply *reply)
{
	if (reply->body != NULL)
		json_object_put(reply->body);
	memset(reply, 0, sizeof(*reply));
}

static int transport_error(struct vg_kube_client *client, CURLcode code, const char *method,
			   const char *path, struct vg_error **err)
{
	const char *detail = client->curl_error[0] ? client->curl_error : curl_easy_strerror(code);
	int errnum = EIO;
	const char *what = "no answer";
	switch (code) {
	case CURLE_OPERATION_TIMEDOUT:
		errnum = ETIMEDOUT;
		what = "timed out";
		break;
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
		errnum = ECONNREFUSED;
		what = "cannot connect";
		break;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_ISSUER_ERROR:
		errnum = EPROTO;
		what = "TLS failed";
		break;
	case CURLE_ABORTED_BY_CALLBACK:
		errnum = ECANCELED;
		what = "cancelled";
		break;
	default:
		break;
	}
	return vg_error_set(err, errnum, "%s %s%s: %s: %s", method, client->ep.server, path, what,
			    detail);
}

static int perform(struct vg_kube_client *client, const char *method, const char *url,
		   const char *content_type, const char *body, struct body_buffer *buf,
		   long *status, CURLcode *code)
{
	CURL *curl = client->curl;
	struct curl_slist *headers = NULL, *tmp;
	cleanup_free char *auth = NULL;
	char type_header[128];
	int bad = 0;
#define ADD_HEADER(h) ((tmp = curl_slist_append(headers, (h))) ? (headers = tmp, 0) : 1)
	bad |= ADD_HEADER("Accept: application/json");
	/* No "Expect: 100-continue" round trip before a body. */
	bad |= ADD_HEADER("Expect:");
	if (body != NULL) {
		snprintf(type_header, sizeof(type_header), "Content-Type: %s", content_type);
		bad |= ADD_HEADER(type_header);
	}
	if (client->ep.token != NULL) {
		if (asprintf(&auth, "Authorization: Bearer %s", client->ep.token) < 0) {
			auth = NULL;
			bad = 1;
		} else {
			bad |= ADD_HEADER(auth);
		}
	}
#undef ADD_HEADER
	client->curl_error[0] = '\0';
	bad |= curl_easy_setopt(curl, CURLOPT_URL, url) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers) != CURLE_OK;
	bad |= curl_easy_setopt(curl, CURLOPT_WRITEDATA, buf) != CURLE_OK;
	if (strcmp(method, "GET") == 0) {
		bad |= curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L) != CURLE_OK;
		bad |= curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, NULL) != CURLE_OK;
	} else {
		bad |= curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body ? body : "") != CURLE_OK;
		bad |= curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)(body ? strlen(body) : 0)) !=
		       CURLE_OK;
		bad |= curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK;
	}
	*code = bad ? CURLE_OUT_OF_MEMORY : curl_easy_perform(curl);
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(headers);
	if (auth != NULL)
		explicit_bzero(auth, strlen(auth));
	return bad ? -ENOMEM : 0;
}

/* After a 401: the kubelet may have rotated the projected token since we read it. */
static bool reread_token(struct vg_kube_client *client)
{
	if (client->ep.token_file[0] == '\0')
		return false;
	char *fresh = NULL;
	cleanup_error struct vg_error *ignored = NULL;
	if (vg_kube_read_token(client->ep.token_file, &fresh, &ignored) < 0)
		return false;
	bool changed = client->ep.token == NULL || strcmp(fresh, client->ep.token) != 0;
	if (client->ep.token != NULL)
		explicit_bzero(client->ep.token, strlen(client->ep.token));
	free(client->ep.token);
	client->ep.token = fresh;
	return changed;
}

int vg_kube_request(struct vg_kube_client *client, const char *method, const char *path,
		    const char *content_type, const char *body, struct vg_kube_reply *reply,
		    struct vg_error **err)
{
	cleanup_free char *url = NULL;
	if (asprintf(&url, "%s%s", client->ep.server, path) < 0)
		return vg_error_set(err, ENOMEM, "out of memory");
	struct body_buffer buf = { 0 };
	long status = 0;
	CURLcode code = CURLE_OK;
	for (int attempt = 0;; attempt++) {
		free(buf.data);
		buf = (struct body_buffer){ 0 };
		status = 0;
		if (atomic_load(&client->cancelled))
			return vg_error_set(err, ECANCELED, "%s %s: cancelled", method, path);
		if (perform(client, method, url, content_type ? content_type : VG_KUBE_JSON, body,
			    &buf, &status, &code) < 0) {
			free(buf.data);
			return vg_error_set(err, ENOMEM, "out of memory");
		}
		if (code != CURLE_OK || status != 401 || attempt > 0 || !reread_token(client))
			break;
	}
	cleanup_free char *data = buf.data;
	if (code != CURLE_OK) {
		if (buf.too_big)
			return vg_error_set(err, EFBIG, "%s %s: the answer is larger than %u bytes",
					    method, path, MAX_BODY);
		return transport_error(client, code, method, path, err);
	}
	struct vg_kube_reply out = { .status = status };
	if (data != NULL) {
		snprintf(out.text, sizeof(out.text), "%s", data);
		enum json_tokener_error jerr = json_tokener_success;
		out.body = json_tokener_parse_verbose(data, &jerr);
		/* A JSON body must be an object; a number or string would surprise every caller. */
		if (out.body != NULL && !json_object_is_type(out.body, json_type_object)) {
			json_object_put(out.body);
			out.body = NULL;
			jerr = json_tokener_error_parse_unexpected;
		}
		if (out.body == NULL && status >= 200 && status < 300)
			return vg_error_set(err, EBADMSG, "%s %s: HTTP %ld with a body that is not "
					    "a JSON object (%s): '%.60s'",
					    method, path, status, json_tokener_error_desc(jerr),
					    out.text);
	}
	*reply = out;
	return 0;
}

static int errno_for_status(long status)
{
	switch (status) {
	case 401:
		return EACCES;
	case 403:
		return EPERM;
	case 404:
		return ENOENT;
	case 409:
		return EEXIST;
	case 422:
	case 400:
		return EINVAL;
	case 429:
		return EAGAIN;
	default:
		return status >= 500 ? EIO : EPROTO;
	}
}

int vg_kube_reply_check(const struct vg_kube_reply *reply, const char *method, const char *path,
			struct vg_error **err)
{
	if (reply->status >= 200 && reply->status < 300)
		return 0;
	/* The API server explains itself in a Status object's message. */
	json_object *message = NULL;
	const char *text = reply->text;
	if (reply->body != NULL && json_object_object_get_ex(reply->body, "message", &message) &&
	    json_object_is_type(message, json_type_string))
		text = json_object_get_string(message);
	return vg_error_set(err, errno_for_status(reply->status), "%s %s: HTTP %ld: %.300s",
			    method, path, reply->status, text[0] ? text : "(no message)");
}

bool vg_kube_reply_is_missing_object(const struct vg_kube_reply *reply)
{
	json_object *kind = NULL, *reason = NULL;
	return reply->status == 404 && reply->body != NULL &&
	       json_object_object_get_ex(reply->body, "kind", &kind) &&
	       strcmp(json_object_get_string(kind), "Status") == 0 &&
	       json_object_object_get_ex(reply->body, "reason", &reason) &&
	       strcmp(json_object_get_string(reason), "NotFound") == 0;
}

int vg_kube_call(struct vg_kube_client *client, const char *method, const char *path,
		 const char *content_type, const char *body, json_object **ret_body,
		 struct vg_error **err)
{
	struct vg_kube_reply reply = { 0 };
	int ret = vg_kube_request(client, method, path, content_type, body, &reply, err);
	if (ret == 0)
		ret = vg_kube_reply_check(&reply, method, path, err);
	if (ret == 0 && ret_body != NULL)
		*ret_body = TAKE_PTR(reply.body);
	vg_kube_reply_clear(&reply);
	return ret;
}

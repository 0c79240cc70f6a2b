/* Drives lib/kube for tests/integration/test_kube_client.py: one client, requests read from
 * stdin one JSON line at a time, one JSON line of result each on stdout. Keeping one process
 * lets the test rotate the token between two requests of the same client.
 *
 *   test_kube_request (--kubeconfig FILE | --in-cluster SA_DIR) [--timeout-ms N]
 *   {"method": "GET", "path": "/api/v1/nodes/n1"}
 *   {"method": "PATCH", "path": "...", "content_type": "...", "body": "..."}
 *   {"op": "apply-labels", "node": "n1", "labels": {"vmgpu.io/gpu.count": "2"}}
 * Result: {"ok": true, "status": 200, "body": {...}} or
 *         {"ok": false, "errno": "ETIMEDOUT", "status": 0, "message": "..."} */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/kube/kube_client.h"
#include "lib/kube/kube_node_api.h"
#include "lib/kube/kube_objects.h"

static const char *errno_name(int code)
{
	switch (code) {
	case ETIMEDOUT:
		return "ETIMEDOUT";
	case ECONNREFUSED:
		return "ECONNREFUSED";
	case EPROTO:
		return "EPROTO";
	case EBADMSG:
		return "EBADMSG";
	case EACCES:
		return "EACCES";
	case EPERM:
		return "EPERM";
	case ENOENT:
		return "ENOENT";
	case EEXIST:
		return "EEXIST";
	case EIO:
		return "EIO";
	case EINVAL:
		return "EINVAL";
	case ECANCELED:
		return "ECANCELED";
	default:
		return "OTHER";
	}
}

static const char *env_lookup(const char *name)
{
	return getenv(name);
}

static void print_result(int ret, long status, json_object *body, const struct vg_error *err)
{
	json_object *out = json_object_new_object();
	json_object_object_add(out, "ok", json_object_new_boolean(ret == 0));
	json_object_object_add(out, "status", json_object_new_int64(status));
	if (ret < 0) {
		json_object_object_add(out, "errno",
				       json_object_new_string(errno_name(vg_error_code(err))));
		json_object_object_add(out, "message", json_object_new_string(err->msg));
	}
	if (body != NULL)
		json_object_object_add(out, "body", json_object_get(body));
	printf("%s\n", vg_kube_json_text(out));
	fflush(stdout);
	json_object_put(out);
}

static const char *member(json_object *obj, const char *key)
{
	json_object *value = NULL;
	return json_object_object_get_ex(obj, key, &value) ? json_object_get_string(value) : NULL;
}

static void run_line(struct vg_kube_client *client, json_object *cmd)
{
	cleanup_error struct vg_error *err = NULL;
	const char *op = member(cmd, "op");
	if (op != NULL && strcmp(op, "apply-labels") == 0) {
		json_object *labels = NULL;
		json_object_object_get_ex(cmd, "labels", &labels);
		char uid[128] = "";
		bool patched = false;
		int ret = vg_kube_node_apply_labels(client, member(cmd, "node"), labels, uid,
						    &patched, &err);
		json_object *body = json_object_new_object();
		json_object_object_add(body, "uid", json_object_new_string(uid));
		json_object_object_add(body, "patched", json_object_new_boolean(patched));
		print_result(ret, 0, body, err);
		json_object_put(body);
		return;
	}
	struct vg_kube_reply reply = { 0 };
	int ret = vg_kube_request(client, member(cmd, "method"), member(cmd, "path"),
				  member(cmd, "content_type"), member(cmd, "body"), &reply, &err);
	if (ret == 0)
		ret = vg_kube_reply_check(&reply, member(cmd, "method"), member(cmd, "path"), &err);
	print_result(ret, reply.status, reply.body, err);
	vg_kube_reply_clear(&reply);
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "kubeconfig", required_argument, NULL, 'k' },
		{ "in-cluster", required_argument, NULL, 'i' },
		{ "timeout-ms", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	const char *kubeconfig = NULL, *sa_dir = NULL;
	struct vg_kube_client_options opts = { .user_agent = "vmgpu-test/1" };
	int c;
	while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
		if (c == 'k')
			kubeconfig = optarg;
		else if (c == 'i')
			sa_dir = optarg;
		else if (c == 't')
			opts.timeout_ms = atol(optarg);
		else
			return 2;
	}
	cleanup_error struct vg_error *err = NULL;
	struct vg_kube_endpoint ep;
	int ret = kubeconfig ? vg_kube_endpoint_from_kubeconfig(&ep, kubeconfig, &err)
			     : vg_kube_endpoint_in_cluster(&ep, sa_dir ? sa_dir : "", env_lookup,
							   &err);
	struct vg_kube_client *client = NULL;
	if (ret == 0) {
		printf("{\"server\": \"%s\"}\n", ep.server);
		fflush(stdout);
		ret = vg_kube_client_new(&ep, &opts, &client, &err);
	}
	if (ret < 0) {
		print_result(ret, 0, NULL, err);
		return 1;
	}
	char line[65536];
	while (fgets(line, sizeof(line), stdin) != NULL) {
		json_object *cmd = json_tokener_parse(line);
		if (cmd == NULL) {
			fprintf(stderr, "test_kube_request: not JSON: %s", line);
			continue;
		}
		run_line(client, cmd);
		json_object_put(cmd);
	}
	vg_kube_client_free(client);
	return 0;
}

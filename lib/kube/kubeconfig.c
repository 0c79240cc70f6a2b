/* The few kubeconfig fields a development agent needs, read with libyaml: the current
 * context's cluster (server, CA or insecure) and user (token, tokenFile or client cert). */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/kube/kube_endpoint.h"

struct kubeconfig {
	yaml_document_t *doc;
	const char *path;
	char dir[PATH_MAX]; /* relative file names are relative to the kubeconfig */
};

static yaml_node_t *mapping_get(struct kubeconfig *kc, yaml_node_t *map, const char *key)
{
	if (map == NULL || map->type != YAML_MAPPING_NODE)
		return NULL;
	for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
	     pair < map->data.mapping.pairs.top; pair++) {
		yaml_node_t *k = yaml_document_get_node(kc->doc, pair->key);
		if (k->type == YAML_SCALAR_NODE && strcmp((char *)k->data.scalar.value, key) == 0)
			return yaml_document_get_node(kc->doc, pair->value);
	}
	return NULL;
}

static const char *scalar_get(struct kubeconfig *kc, yaml_node_t *map, const char *key)
{
	yaml_node_t *node = mapping_get(kc, map, key);
	if (node == NULL || node->type != YAML_SCALAR_NODE || node->data.scalar.length == 0)
		return NULL;
	return (const char *)node->data.scalar.value;
}

/* contexts/clusters/users are lists of {name: N, <field>: {...}}; returns the named one's
 * <field> mapping. */
static yaml_node_t *named_entry(struct kubeconfig *kc, const char *list, const char *field,
				const char *name, struct vg_error **err)
{
	yaml_node_t *seq = mapping_get(kc, yaml_document_get_root_node(kc->doc), list);
	if (seq != NULL && seq->type == YAML_SEQUENCE_NODE) {
		for (yaml_node_item_t *item = seq->data.sequence.items.start;
		     item < seq->data.sequence.items.top; item++) {
			yaml_node_t *entry = yaml_document_get_node(kc->doc, *item);
			const char *entry_name = scalar_get(kc, entry, "name");
			if (entry_name != NULL && strcmp(entry_name, name) == 0) {
				yaml_node_t *body = mapping_get(kc, entry, field);
				if (body != NULL && body->type == YAML_MAPPING_NODE)
					return body;
				break;
			}
		}
	}
	vg_error_set(err, ENOENT, "%s: no %s named '%s' in %s", kc->path, field, name, list);
	return NULL;
}

static int copy_path(struct kubeconfig *kc, const char *value, char *out, size_t size,
		     struct vg_error **err)
{
	int n = value[0] == '/' ? snprintf(out, size, "%s", value)
				: snprintf(out, size, "%s/%s", kc->dir, value);
	if (n < 0 || (size_t)n >= size)
		return vg_error_set(err, ENAMETOOLONG, "%s: path '%s' is too long", kc->path, value);
	return 0;
}

/* A file field and its inline *-data twin: either one, never both. */
static int read_pem_field(struct kubeconfig *kc, yaml_node_t *map, const char *file_key,
			  char *file_out, size_t file_size, struct vg_kube_pem *pem_out,
			  struct vg_error **err)
{
	char data_key[64];
	snprintf(data_key, sizeof(data_key), "%s-data", file_key);
	const char *file = scalar_get(kc, map, file_key);
	const char *data = scalar_get(kc, map, data_key);
	if (file != NULL && data != NULL)
		return vg_error_set(err, EINVAL, "%s: both %s and %s are set", kc->path, file_key,
				    data_key);
	if (file != NULL)
		return copy_path(kc, file, file_out, file_size, err);
	if (data != NULL && vg_kube_base64_decode(data, pem_out, err) < 0)
		return vg_error_prefix(err, "%s: %s", kc->path, data_key);
	return 0;
}

static int read_cluster(struct kubeconfig *kc, yaml_node_t *cluster, struct vg_kube_endpoint *ep,
			struct vg_error **err)
{
	const char *server = scalar_get(kc, cluster, "server");
	if (server == NULL)
		return vg_error_set(err, EINVAL, "%s: the cluster has no server", kc->path);
	/* http:// is for `kubectl proxy` on localhost during development. */
	if (strncmp(server, "https://", 8) != 0 && strncmp(server, "http://", 7) != 0)
		return vg_error_set(err, EINVAL, "%s: server '%s' is not an http(s) URL", kc->path,
				    server);
	int n = snprintf(ep->server, sizeof(ep->server), "%s", server);
	if (n < 0 || (size_t)n >= sizeof(ep->server))
		return vg_error_set(err, ENAMETOOLONG, "%s: server URL is too long", kc->path);
	while (n > 0 && ep->server[n - 1] == '/')
		ep->server[--n] = '\0';
	const char *insecure = scalar_get(kc, cluster, "insecure-skip-tls-verify");
	ep->insecure = insecure != NULL && strcmp(insecure, "true") == 0;
	return read_pem_field(kc, cluster, "certificate-authority", ep->ca_file,
			      sizeof(ep->ca_file), &ep->ca_pem, err);
}

static int read_user(struct kubeconfig *kc, yaml_node_t *user, struct vg_kube_endpoint *ep,
		     struct vg_error **err)
{
	static const char *const unsupported[] = { "exec", "auth-provider", "username" };
	for (size_t i = 0; i < VG_ARRAY_SIZE(unsupported); i++)
		if (mapping_get(kc, user, unsupported[i]) != NULL)
			return vg_error_set(err, ENOTSUP,
					    "%s: the user's '%s' credentials are not supported; use "
					    "token, tokenFile or a client certificate",
					    kc->path, unsupported[i]);
	const char *token = scalar_get(kc, user, "token");
	const char *token_file = scalar_get(kc, user, "tokenFile");
	if (token != NULL && (ep->token = strdup(token)) == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	if (token == NULL && token_file != NULL) {
		int ret = copy_path(kc, token_file, ep->token_file, sizeof(ep->token_file), err);
		if (ret == 0)
			ret = vg_kube_read_token(ep->token_file, &ep->token, err);
		if (ret < 0)
			return ret;
	}
	int ret = read_pem_field(kc, user, "client-certificate", ep->cert_file,
				 sizeof(ep->cert_file), &ep->cert_pem, err);
	if (ret == 0)
		ret = read_pem_field(kc, user, "client-key", ep->key_file, sizeof(ep->key_file),
				     &ep->key_pem, err);
	if (ret < 0)
		return ret;
	bool has_cert = ep->cert_file[0] != '\0' || ep->cert_pem.data != NULL;
	bool has_key = ep->key_file[0] != '\0' || ep->key_pem.data != NULL;
	if (has_cert != has_key)
		return vg_error_set(err, EINVAL,
				    "%s: a client certificate needs both the certificate and the key",
				    kc->path);
	return 0;
}

static int read_endpoint(struct kubeconfig *kc, struct vg_kube_endpoint *ep,
			 struct vg_error **err)
{
	yaml_node_t *root = yaml_document_get_root_node(kc->doc);
	if (root == NULL || root->type != YAML_MAPPING_NODE)
		return vg_error_set(err, EINVAL, "%s: not a kubeconfig (expected a mapping)",
				    kc->path);
	const char *current = scalar_get(kc, root, "current-context");
	if (current == NULL)
		return vg_error_set(err, EINVAL, "%s: no current-context", kc->path);
	yaml_node_t *context = named_entry(kc, "contexts", "context", current, err);
	if (context == NULL)
		return -ENOENT;
	const char *cluster_name = scalar_get(kc, context, "cluster");
	const char *user_name = scalar_get(kc, context, "user");
	if (cluster_name == NULL)
		return vg_error_set(err, EINVAL, "%s: context '%s' names no cluster", kc->path,
				    current);
	yaml_node_t *cluster = named_entry(kc, "clusters", "cluster", cluster_name, err);
	if (cluster == NULL)
		return -ENOENT;
	int ret = read_cluster(kc, cluster, ep, err);
	if (ret < 0 || user_name == NULL)
		return ret;
	yaml_node_t *user = named_entry(kc, "users", "user", user_name, err);
	if (user == NULL)
		return -ENOENT;
	return read_user(kc, user, ep, err);
}

int vg_kube_endpoint_from_kubeconfig(struct vg_kube_endpoint *ep, const char *path,
				     struct vg_error **err)
{
	memset(ep, 0, sizeof(*ep));
	cleanup_free char *text = NULL;
	size_t len = 0;
	int ret = vg_read_file(path, 4u << 20, &text, &len, err);
	if (ret < 0)
		return vg_error_prefix(err, "kubeconfig");
	struct kubeconfig kc = { .path = path };
	cleanup_free char *copy = strdup(path);
	if (copy == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	snprintf(kc.dir, sizeof(kc.dir), "%s", dirname(copy));

	yaml_parser_t parser;
	yaml_document_t doc;
	if (!yaml_parser_initialize(&parser))
		return vg_error_set(err, ENOMEM, "libyaml: cannot initialise the parser");
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &doc)) {
		ret = vg_error_set(err, EINVAL, "%s:%lu: invalid YAML: %s", path,
				   (unsigned long)parser.problem_mark.line + 1,
				   parser.problem ? parser.problem : "parse error");
		yaml_parser_delete(&parser);
		return ret;
	}
	kc.doc = &doc;
	ret = read_endpoint(&kc, ep, err);
	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	explicit_bzero(text, len); /* it may hold a token or a key */
	if (ret < 0)
		vg_kube_endpoint_clear(ep);
	return ret;
}

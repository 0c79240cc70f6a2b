#include "lib/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/error.h"

enum key_kind {
	KEY_PATH,
	KEY_BOOL,
	KEY_LOG_FORMAT,
	KEY_LOG_LEVEL,
	KEY_FILTER,
	KEY_INT,
	KEY_WORD,
	KEY_SECONDS,
	KEY_RESOURCE_NAME,
	KEY_RESOURCE_NAMING,
	KEY_RESOURCE_ALIASES,
};

struct key_spec {
	const char *name;
	enum key_kind kind;
	size_t offset;
	size_t size; /* strings: the buffer size */
	long long min, max; /* integers */
	const char *words; /* KEY_WORD: the allowed values, space separated */
};

#define PATH_KEY(field)                                                                            \
	{ #field, KEY_PATH, offsetof(struct vg_config, field),                                     \
	  sizeof(((struct vg_config *)0)->field), 0, 0, NULL }
#define INT_KEY(field, lo, hi) { #field, KEY_INT, offsetof(struct vg_config, field), 0, lo, hi, NULL }

static const struct key_spec top_keys[] = {
	PATH_KEY(sysfs_root),
	PATH_KEY(dev_root),
	PATH_KEY(proc_root),
	PATH_KEY(modules_dir),
	PATH_KEY(pci_ids),
	PATH_KEY(qemu_binary),
	PATH_KEY(socket),
	PATH_KEY(state_dir),
	PATH_KEY(shim_binary),
	PATH_KEY(guest_kernel),
	PATH_KEY(guest_initrd),
	{ "accel", KEY_WORD, offsetof(struct vg_config, accel), sizeof(((struct vg_config *)0)->accel),
	  0, 0, "auto kvm tcg" },
	{ "network_pool", KEY_WORD, offsetof(struct vg_config, network_pool),
	  sizeof(((struct vg_config *)0)->network_pool), 0, 0, NULL },
	INT_KEY(default_vcpus, 1, 256),
	INT_KEY(default_memory_mib, 64, 4194304),
	INT_KEY(qemu_uid, -1, 4294967294LL),
	INT_KEY(qemu_gid, -1, 4294967294LL),
	{ "health_interval_s", KEY_SECONDS, offsetof(struct vg_config, health_interval_s), 0, 0, 3600,
	  NULL },
	INT_KEY(ready_timeout_s, 1, 3600),
	PATH_KEY(kubelet_dir),
	PATH_KEY(pod_resources_socket),
	{ "resource_naming", KEY_RESOURCE_NAMING, offsetof(struct vg_config, resource_naming), 0, 0,
	  0, "single per-model" },
	{ "resource_name", KEY_RESOURCE_NAME, offsetof(struct vg_config, resource_name),
	  sizeof(((struct vg_config *)0)->resource_name), 0, 0, NULL },
	{ "resource_aliases", KEY_RESOURCE_ALIASES, offsetof(struct vg_config, resource_aliases), 0,
	  0, 0, NULL },
	{ "kube_enabled", KEY_WORD, offsetof(struct vg_config, kube_enabled),
	  sizeof(((struct vg_config *)0)->kube_enabled), 0, 0, "auto true false" },
	PATH_KEY(kubeconfig),
	{ "node_name", KEY_WORD, offsetof(struct vg_config, node_name),
	  sizeof(((struct vg_config *)0)->node_name), 0, 0, NULL },
	{ "events_namespace", KEY_WORD, offsetof(struct vg_config, events_namespace),
	  sizeof(((struct vg_config *)0)->events_namespace), 0, 0, NULL },
	{ "resource_slices", KEY_BOOL, offsetof(struct vg_config, resource_slices), 0, 0, 0, NULL },
	INT_KEY(label_interval_s, 10, 86400),
	{ "allow_boot_vga", KEY_BOOL, offsetof(struct vg_config, allow_boot_vga), 0, 0, 0, NULL },
	{ "gpu_filter", KEY_FILTER, offsetof(struct vg_config, filter), 0, 0, 0, NULL },
	{ "log_format", KEY_LOG_FORMAT, offsetof(struct vg_config, log_format), 0, 0, 0, NULL },
	{ "log_level", KEY_LOG_LEVEL, offsetof(struct vg_config, log_level), 0, 0, 0, NULL },
};

typedef int (*filter_add_fn)(struct vg_gpu_filter *, const char *, struct vg_error **);

static const struct {
	const char *name;
	filter_add_fn add;
} filter_keys[] = {
	{ "vendors", vg_gpu_filter_add_vendor },
	{ "classes", vg_gpu_filter_add_class },
	{ "ids", vg_gpu_filter_add_id },
	{ "bdfs", vg_gpu_filter_add_bdf },
};

struct parse_ctx {
	yaml_document_t *doc;
	const char *origin;
	struct vg_config *config;
};

static unsigned long line_of(const yaml_node_t *node)
{
	return (unsigned long)node->start_mark.line + 1;
}

static int fail_at(struct parse_ctx *ctx, const yaml_node_t *node, struct vg_error **err,
		   const char *fmt, const char *key, const char *detail)
{
	return vg_error_set(err, EINVAL, "%s:%lu: %s: %s", ctx->origin, line_of(node), key,
			    detail ? detail : fmt);
}

static const char *scalar_text(const yaml_node_t *node)
{
	return node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value : NULL;
}

static int parse_path(struct parse_ctx *ctx, const char *key, yaml_node_t *value, char *out,
		      size_t size, struct vg_error **err)
{
	const char *text = scalar_text(value);
	if (text == NULL)
		return fail_at(ctx, value, err, "expected a path string", key, NULL);
	if (strlen(text) >= size)
		return fail_at(ctx, value, err, "path is too long", key, NULL);
	if (text[0] != '\0' && text[0] != '/' && strchr(text, '/') != NULL)
		return fail_at(ctx, value, err, "must be an absolute path", key, NULL);
	strcpy(out, text);
	return 0;
}

static int parse_bool(struct parse_ctx *ctx, const char *key, yaml_node_t *value, bool *out,
		      struct vg_error **err)
{
	const char *text = scalar_text(value);
	if (text != NULL && strcmp(text, "true") == 0)
		*out = true;
	else if (text != NULL && strcmp(text, "false") == 0)
		*out = false;
	else
		return fail_at(ctx, value, err, "expected true or false", key, NULL);
	return 0;
}

static int parse_int(struct parse_ctx *ctx, const struct key_spec *spec, yaml_node_t *value,
		     long long *out, struct vg_error **err)
{
	const char *text = scalar_text(value);
	char *end = NULL;
	errno = 0;
	long long v = text ? strtoll(text, &end, 10) : 0;
	if (text == NULL || text[0] == '\0' || *end != '\0' || errno != 0)
		return fail_at(ctx, value, err, "expected an integer", spec->name, NULL);
	if (v < spec->min || v > spec->max) {
		char range[96];
		snprintf(range, sizeof(range), "must be between %lld and %lld", spec->min, spec->max);
		return fail_at(ctx, value, err, NULL, spec->name, range);
	}
	*out = v;
	return 0;
}

/* Seconds with an optional fraction, at least 0.1. */
static int parse_seconds(struct parse_ctx *ctx, const struct key_spec *spec, yaml_node_t *value,
			 double *out, struct vg_error **err)
{
	const char *text = scalar_text(value);
	char *end = NULL;
	errno = 0;
	double v = text ? strtod(text, &end) : 0;
	if (text == NULL || text[0] == '\0' || *end != '\0' || errno != 0 || v != v)
		return fail_at(ctx, value, err, "expected a number of seconds", spec->name, NULL);
	if (v < 0.1 || v > (double)spec->max) {
		char range[96];
		snprintf(range, sizeof(range), "must be between 0.1 and %lld seconds", spec->max);
		return fail_at(ctx, value, err, NULL, spec->name, range);
	}
	*out = v;
	return 0;
}

static int parse_word(struct parse_ctx *ctx, const struct key_spec *spec, yaml_node_t *value,
		      char *out, struct vg_error **err)
{
	const char *text = scalar_text(value);
	if (text == NULL || text[0] == '\0' || strlen(text) >= spec->size)
		return fail_at(ctx, value, err, "expected a short string", spec->name, NULL);
	if (spec->words != NULL) {
		bool allowed = false;
		size_t len = strlen(text);
		for (const char *w = spec->words; *w && !allowed; w += strcspn(w, " "), w += *w == ' ')
			allowed = strncmp(w, text, len) == 0 && (w[len] == ' ' || w[len] == '\0');
		if (!allowed) {
			char msg[128];
			snprintf(msg, sizeof(msg), "'%s' is not one of: %s", text, spec->words);
			return fail_at(ctx, value, err, NULL, spec->name, msg);
		}
	}
	strcpy(out, text);
	return 0;
}

static int parse_filter(struct parse_ctx *ctx, yaml_node_t *value, struct vg_gpu_filter *filter,
			struct vg_error **err)
{
	if (value->type != YAML_MAPPING_NODE)
		return fail_at(ctx, value, err,
			       "expected a mapping with vendors, classes, ids and bdfs",
			       "gpu_filter", NULL);
	/* A filter in the file replaces the default one as a whole. */
	vg_gpu_filter_clear(filter);
	for (yaml_node_pair_t *pair = value->data.mapping.pairs.start;
	     pair < value->data.mapping.pairs.top; pair++) {
		yaml_node_t *k = yaml_document_get_node(ctx->doc, pair->key);
		yaml_node_t *v = yaml_document_get_node(ctx->doc, pair->value);
		const char *name = scalar_text(k);
		filter_add_fn add = NULL;
		for (size_t i = 0; name && i < VG_ARRAY_SIZE(filter_keys); i++)
			if (strcmp(name, filter_keys[i].name) == 0)
				add = filter_keys[i].add;
		char full[96];
		snprintf(full, sizeof(full), "gpu_filter.%s", name ? name : "?");
		if (add == NULL)
			return fail_at(ctx, k, err,
				       "unknown key (expected vendors, classes, ids or bdfs)", full,
				       NULL);
		if (v->type != YAML_SEQUENCE_NODE)
			return fail_at(ctx, v, err, "expected a list of strings", full, NULL);
		for (yaml_node_item_t *item = v->data.sequence.items.start;
		     item < v->data.sequence.items.top; item++) {
			yaml_node_t *entry = yaml_document_get_node(ctx->doc, *item);
			const char *text = scalar_text(entry);
			if (text == NULL)
				return fail_at(ctx, entry, err, "expected a string", full, NULL);
			cleanup_error struct vg_error *inner = NULL;
			if (add(filter, text, &inner) < 0)
				return fail_at(ctx, entry, err, NULL, full, inner->msg);
		}
	}
	return 0;
}

static int parse_enum(struct parse_ctx *ctx, const struct key_spec *spec, yaml_node_t *value,
		      struct vg_error **err)
{
	const char *text = scalar_text(value);
	cleanup_error struct vg_error *inner = NULL;
	void *field = (char *)ctx->config + spec->offset;
	int ret = text == NULL ? -EINVAL
		  : spec->kind == KEY_LOG_FORMAT
			  ? vg_log_parse_format(text, field, &inner)
			  : vg_log_parse_level(text, field, &inner);
	if (ret < 0)
		return fail_at(ctx, value, err, "expected a string", spec->name,
			       inner ? inner->msg : NULL);
	return 0;
}

/* kubelet's IsQualifiedName for the part after the slash. */
static bool qualified_name_ok(const char *name, size_t len)
{
	if (len == 0 || len > 63 || !isalnum((unsigned char)name[0]) ||
	    !isalnum((unsigned char)name[len - 1]))
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)name[i]) && !strchr("-_.", name[i]))
			return false;
	return true;
}

/* A DNS-1123 subdomain: lowercase labels of letters, digits and '-', joined by dots. */
static bool subdomain_ok(const char *domain, size_t len)
{
	if (len == 0 || len > 253 - strlen("requests."))
		return false;
	char prev = '.';
	for (size_t i = 0; i < len; i++) {
		char c = domain[i];
		bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
		if (!alnum && c != '-' && c != '.')
			return false;
		if (c == '.' && (prev == '.' || prev == '-'))
			return false;
		if (c == '-' && prev == '.')
			return false;
		prev = c;
	}
	return prev != '.' && prev != '-';
}

int vg_resource_name_check(const char *text, struct vg_error **err)
{
	const char *slash = strchr(text, '/');
	if (slash == NULL || strchr(slash + 1, '/') != NULL)
		return vg_error_set(
			err, EINVAL,
			"'%s' is not of the form domain/name (for example nvidia.com/gpu)", text);
	size_t domain_len = (size_t)(slash - text);
	if (!subdomain_ok(text, domain_len))
		return vg_error_set(err, EINVAL,
				    "'%s': the domain must be a lowercase DNS name of at most 244 "
				    "characters",
				    text);
	if ((domain_len == strlen("kubernetes.io") && strncmp(text, "kubernetes.io", 13) == 0) ||
	    (domain_len > 14 && strncmp(slash - 14, ".kubernetes.io", 14) == 0))
		return vg_error_set(
			err, EINVAL,
			"'%s': the kubernetes.io domain is reserved for native resources", text);
	if (!qualified_name_ok(slash + 1, strlen(slash + 1)))
		return vg_error_set(
			err, EINVAL,
			"'%s': the name must be 1 to 63 letters, digits, '-', '_' or '.', "
			"starting and ending with a letter or digit",
			text);
	return 0;
}

static int parse_resource_name(struct parse_ctx *ctx, const struct key_spec *spec,
			       yaml_node_t *value, char *out, struct vg_error **err)
{
	const char *text = scalar_text(value);
	if (text == NULL || strlen(text) >= spec->size)
		return fail_at(ctx, value, err, "expected a resource name like nvidia.com/gpu",
			       spec->name, NULL);
	cleanup_error struct vg_error *inner = NULL;
	if (vg_resource_name_check(text, &inner) < 0)
		return fail_at(ctx, value, err, NULL, spec->name, inner->msg);
	strcpy(out, text);
	return 0;
}

static int parse_resource_naming(struct parse_ctx *ctx, const struct key_spec *spec,
				 yaml_node_t *value, enum vg_resource_naming *out,
				 struct vg_error **err)
{
	const char *text = scalar_text(value);
	if (text != NULL && strcmp(text, "single") == 0)
		*out = VG_RESOURCE_SINGLE;
	else if (text != NULL && strcmp(text, "per-model") == 0)
		*out = VG_RESOURCE_PER_MODEL;
	else
		return fail_at(ctx, value, err, "expected single or per-model", spec->name, NULL);
	return 0;
}

/* model: name. A name without a domain takes resource_name's domain when the agent names the
 * resources (so the order of keys in the file does not matter); here it is only checked. */
static int parse_resource_aliases(struct parse_ctx *ctx, yaml_node_t *value,
				  struct vg_config *config, struct vg_error **err)
{
	if (value->type != YAML_MAPPING_NODE)
		return fail_at(ctx, value, err,
			       "expected a mapping of GPU model to resource name, for example "
			       "GH100_H100_SXM5_80GB: nvidia.com/h100",
			       "resource_aliases", NULL);
	config->n_resource_aliases = 0;
	for (yaml_node_pair_t *pair = value->data.mapping.pairs.start;
	     pair < value->data.mapping.pairs.top; pair++) {
		yaml_node_t *k = yaml_document_get_node(ctx->doc, pair->key);
		yaml_node_t *v = yaml_document_get_node(ctx->doc, pair->value);
		const char *model = scalar_text(k), *name = scalar_text(v);
		struct vg_resource_alias *alias =
			&config->resource_aliases[config->n_resource_aliases];
		char full[160];
		snprintf(full, sizeof(full), "resource_aliases.%.96s", model ? model : "?");
		if (config->n_resource_aliases == VG_MAX_RESOURCE_ALIASES)
			return fail_at(ctx, k, err, "too many aliases (at most 16)", full, NULL);
		if (model == NULL || model[0] == '\0' || strlen(model) >= sizeof(alias->model))
			return fail_at(ctx, k, err, "expected a GPU model of 1 to 95 characters",
				       full, NULL);
		if (name == NULL || name[0] == '\0' || strlen(name) >= sizeof(alias->name))
			return fail_at(ctx, v, err, "expected a resource name", full, NULL);
		cleanup_error struct vg_error *inner = NULL;
		if (strchr(name, '/') != NULL ? vg_resource_name_check(name, &inner) < 0
					      : !qualified_name_ok(name, strlen(name)))
			return fail_at(
				ctx, v, err, NULL, full,
				inner ? inner->msg
				      : "a name without a domain must be 1 to 63 letters, "
					"digits, '-', '_' or '.', starting and ending with a "
					"letter or digit");
		for (size_t i = 0; i < config->n_resource_aliases; i++)
			if (strcasecmp(config->resource_aliases[i].model, model) == 0)
				return fail_at(ctx, k, err, "the model is listed twice", full,
					       NULL);
		strcpy(alias->model, model);
		strcpy(alias->name, name);
		config->n_resource_aliases++;
	}
	return 0;
}

static int apply_key(struct parse_ctx *ctx, const struct key_spec *spec, yaml_node_t *value,
		     struct vg_error **err)
{
	void *field = (char *)ctx->config + spec->offset;
	switch (spec->kind) {
	case KEY_PATH:
		return parse_path(ctx, spec->name, value, field, spec->size, err);
	case KEY_INT:
		return parse_int(ctx, spec, value, field, err);
	case KEY_WORD:
		return parse_word(ctx, spec, value, field, err);
	case KEY_SECONDS:
		return parse_seconds(ctx, spec, value, field, err);
	case KEY_BOOL:
		return parse_bool(ctx, spec->name, value, field, err);
	case KEY_FILTER:
		return parse_filter(ctx, value, field, err);
	case KEY_RESOURCE_NAME:
		return parse_resource_name(ctx, spec, value, field, err);
	case KEY_RESOURCE_NAMING:
		return parse_resource_naming(ctx, spec, value, field, err);
	case KEY_RESOURCE_ALIASES:
		return parse_resource_aliases(ctx, value, ctx->config, err);
	case KEY_LOG_FORMAT:
	case KEY_LOG_LEVEL:
		return parse_enum(ctx, spec, value, err);
	}
	return vg_error_set(err, EINVAL, "internal: unknown key kind");
}

static int apply_document(struct parse_ctx *ctx, struct vg_error **err)
{
	yaml_node_t *root = yaml_document_get_root_node(ctx->doc);
	if (root == NULL)
		return 0; /* an empty file keeps every default */
	if (root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0)
		return 0;
	if (root->type != YAML_MAPPING_NODE)
		return vg_error_set(err, EINVAL, "%s:%lu: the config must be a mapping of keys",
				    ctx->origin, line_of(root));
	for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
	     pair < root->data.mapping.pairs.top; pair++) {
		yaml_node_t *k = yaml_document_get_node(ctx->doc, pair->key);
		yaml_node_t *v = yaml_document_get_node(ctx->doc, pair->value);
		const char *name = scalar_text(k);
		const struct key_spec *spec = NULL;
		for (size_t i = 0; name && i < VG_ARRAY_SIZE(top_keys); i++)
			if (strcmp(name, top_keys[i].name) == 0)
				spec = &top_keys[i];
		if (spec == NULL)
			return fail_at(ctx, k, err, "unknown key", name ? name : "(non-string key)",
				       NULL);
		int ret = apply_key(ctx, spec, v, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

void vg_config_defaults(struct vg_config *config)
{
	memset(config, 0, sizeof(*config));
	strcpy(config->sysfs_root, "/sys");
	strcpy(config->dev_root, "/dev");
	strcpy(config->proc_root, "/proc");
	vg_gpu_filter_default(&config->filter);
	strcpy(config->socket, "/run/vmgpu/vmgpu.sock");
	strcpy(config->state_dir, "/var/lib/vmgpu");
	strcpy(config->accel, "auto");
	strcpy(config->network_pool, "10.88.0.0/16");
	config->default_vcpus = 2;
	config->default_memory_mib = 1024;
	config->qemu_uid = -1;
	config->qemu_gid = -1;
	config->health_interval_s = 5;
	config->ready_timeout_s = 120;
	strcpy(config->kubelet_dir, "/var/lib/kubelet/device-plugins");
	strcpy(config->pod_resources_socket, "/var/lib/kubelet/pod-resources/kubelet.sock");
	config->resource_naming = VG_RESOURCE_SINGLE;
	strcpy(config->resource_name, "nvidia.com/gpu");
	strcpy(config->kube_enabled, "auto");
	strcpy(config->events_namespace, "default");
	config->label_interval_s = 60;
	config->log_format = VG_LOG_TEXT;
	config->log_level = VG_LOG_INFO;
}

int vg_config_load_string(struct vg_config *config, const char *text, size_t len,
			  const char *origin, struct vg_error **err)
{
	yaml_parser_t parser;
	yaml_document_t doc;
	if (!yaml_parser_initialize(&parser))
		return vg_error_set(err, ENOMEM, "libyaml: cannot initialise the parser");
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &doc)) {
		int ret = vg_error_set(err, EINVAL, "%s:%lu: invalid YAML: %s", origin,
				       (unsigned long)parser.problem_mark.line + 1,
				       parser.problem ? parser.problem : "parse error");
		yaml_parser_delete(&parser);
		return ret;
	}
	/* Work on a copy so a bad file leaves the caller's config untouched. */
	struct vg_config candidate = *config;
	struct parse_ctx ctx = { &doc, origin, &candidate };
	int ret = apply_document(&ctx, err);
	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	if (ret == 0)
		*config = candidate;
	return ret;
}

int vg_config_load_file(struct vg_config *config, const char *path, bool optional,
			struct vg_error **err)
{
	cleanup_free char *text = NULL;
	size_t len = 0;
	cleanup_error struct vg_error *read_err = NULL;
	if (vg_read_file(path, 1u << 20, &text, &len, &read_err) < 0) {
		if (optional && read_err->code == ENOENT)
			return 0;
		vg_error_keep_first(err, TAKE_PTR(read_err));
		return vg_error_prefix(err, "config");
	}
	return vg_config_load_string(config, text, len, path, err);
}

/* vmgpuctl describe gpu ID | describe sandbox ID: every detail of one object, kubectl-describe
 * style, or the object itself with -o json|yaml. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "cli/proto_json.h"
#include "cli/sandbox_view.h"
#include "lib/bdf.h"
#include "lib/cleanup.h"
#include "lib/error.h"

static void describe_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s describe gpu BDF|INDEX [-o json|yaml]\n"
		"       %s describe sandbox ID [-o json|yaml]\n"
		"\n"
		"Shows everything the agent knows about one GPU (a PCI address in any case, with or\n"
		"without the 0000: domain, or its index) or one sandbox.\n"
		"\n"
		"Flags:\n",
		program, program);
	vg_cli_print_output_flag(out, "json or yaml: the object as the agent sent it");
	vg_cli_print_agent_flags(out, VG_CLI_DEFAULT_TIMEOUT_S);
}

static const char *or_none(const char *s)
{
	return s && s[0] ? s : "<none>";
}

static bool all_digits(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return false;
	return true;
}

static const Vmgpu__V1__GpuDevice *find_gpu(const Vmgpu__V1__ListDevicesResponse *list,
					    const char *id)
{
	bool by_index = all_digits(id);
	struct vg_bdf wanted = { 0 };
	bool by_bdf = !by_index && vg_bdf_parse(id, true, &wanted, NULL) == 0;
	for (size_t i = 0; i < list->n_devices; i++) {
		const Vmgpu__V1__GpuDevice *d = list->devices[i];
		struct vg_bdf have;
		if (by_index && strtol(id, NULL, 10) == d->index)
			return d;
		if (by_bdf && vg_bdf_parse(d->bdf, false, &have, NULL) == 0 &&
		    vg_bdf_compare(&have, &wanted) == 0)
			return d;
		if (!by_index && !by_bdf && strcasecmp(d->id, id) == 0)
			return d; /* an agent whose device ids are not BDFs */
	}
	return NULL;
}

/* "Labels: <none>", or "Labels:" with one indented line per entry below it. */
static void print_map_header(FILE *out, const char *key, size_t n)
{
	if (n == 0)
		vg_describe_line(out, 0, key, "<none>");
	else
		vg_describe_section(out, 0, key);
}

/* One map entry, whatever its generated type, for sorting: kubectl shows labels by key. */
struct key_value {
	const char *key, *value;
};

static int compare_key_values(const void *a, const void *b)
{
	return strcmp(((const struct key_value *)a)->key, ((const struct key_value *)b)->key);
}

/* Takes ownership of items (from calloc). */
static void print_sorted_map(FILE *out, const char *title, struct key_value *items, size_t n)
{
	print_map_header(out, title, n);
	if (items)
		qsort(items, n, sizeof(*items), compare_key_values);
	for (size_t i = 0; items && i < n; i++)
		fprintf(out, "  %s=%s\n", items[i].key, items[i].value);
	free(items);
}

static void print_gpu(const Vmgpu__V1__GpuDevice *d, FILE *out)
{
	vg_describe_line(out, 0, "Name", "%s", or_none(d->name));
	vg_describe_line(out, 0, "ID", "%s", d->id);
	vg_describe_line(out, 0, "BDF", "%s", d->bdf);
	vg_describe_line(out, 0, "Index", "%d", d->index);
	vg_describe_line(out, 0, "State", "%s", d->state);
	vg_describe_line(out, 0, "Sandbox", "%s", or_none(d->sandbox_id));
	vg_describe_line(out, 0, "IDs", "%s:%s", vg_output_pci_id(d->vendor_id),
			 vg_output_pci_id(d->device_id));
	if (d->subsystem_vendor_id[0] || d->subsystem_device_id[0])
		vg_describe_line(out, 0, "Subsystem", "%s:%s",
				 vg_output_pci_id(d->subsystem_vendor_id),
				 vg_output_pci_id(d->subsystem_device_id));
	if (d->numa_node < 0)
		vg_describe_line(out, 0, "NUMA Node", "<none>");
	else
		vg_describe_line(out, 0, "NUMA Node", "%d", d->numa_node);
	if (d->iommu_group < 0)
		vg_describe_line(out, 0, "IOMMU Group", "<none>");
	else
		vg_describe_line(out, 0, "IOMMU Group", "%d", d->iommu_group);
	vg_describe_line(out, 0, "Driver", "%s", or_none(d->driver));
	vg_describe_line(out, 0, "PCIe Root", "%s", or_none(d->pcie_root));
	print_map_header(out, "Companions", d->n_companions);
	for (size_t i = 0; i < d->n_companions; i++) {
		const Vmgpu__V1__PciFunction *c = d->companions[i];
		fprintf(out, "  %s  [%s %s:%s]  driver %s\n", c->bdf,
			or_none(vg_output_pci_id(c->class_code)), vg_output_pci_id(c->vendor_id),
			vg_output_pci_id(c->device_id), or_none(c->driver));
	}
	struct key_value *attributes = calloc(d->n_attributes + 1, sizeof(*attributes));
	for (size_t i = 0; attributes && i < d->n_attributes; i++)
		attributes[i] = (struct key_value){ d->attributes[i]->key, d->attributes[i]->value };
	print_sorted_map(out, "Attributes", attributes, d->n_attributes);
	/* reason is the headline; reasons has every one, the headline included. */
	bool listed = false;
	for (size_t i = 0; i < d->n_reasons; i++)
		listed |= strcmp(d->reasons[i], d->reason) == 0;
	size_t n_reasons = d->n_reasons + (d->reason[0] && !listed);
	print_map_header(out, "Reasons", n_reasons);
	if (d->reason[0] && !listed)
		fprintf(out, "  %s\n", d->reason);
	for (size_t i = 0; i < d->n_reasons; i++)
		fprintf(out, "  %s\n", d->reasons[i]);
}

static int describe_gpu(struct vg_api *api, const char *id, const struct vg_cli_options *opts,
			struct vg_error **err)
{
	cleanup_proto Vmgpu__V1__ListDevicesResponse *list = NULL;
	int ret = vg_api_list_devices(api, &list, err);
	if (ret < 0)
		return ret;
	const Vmgpu__V1__GpuDevice *d = find_gpu(list, id);
	if (d == NULL)
		return vg_error_set(err, ENOENT, "NOT_FOUND: no GPU %s on this node (%s get gpus "
						 "lists them)",
				    id, opts->program);
	if (opts->output == VG_OUTPUT_JSON || opts->output == VG_OUTPUT_YAML) {
		json_object *obj = vg_proto_to_json(&d->base);
		ret = vg_output_document(stdout, opts->output, obj, err);
		json_object_put(obj);
		return ret;
	}
	print_gpu(d, stdout);
	return 0;
}

static void print_created(FILE *out, long long created_ns)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	char age[32], when[64] = "<unknown>";
	vg_format_age(created_ns, (long long)now.tv_sec * 1000000000LL + now.tv_nsec, age,
		      sizeof(age));
	time_t secs = (time_t)(created_ns / 1000000000LL);
	struct tm tm;
	if (created_ns > 0 && gmtime_r(&secs, &tm))
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	vg_describe_line(out, 0, "Created", "%s (%s ago)", when, age);
}

static void print_vmgpu(FILE *out, const struct vg_sandbox_view *v)
{
	vg_describe_section(out, 0, "VM");
	vg_describe_line(out, 2, "State", "%s", v->state);
	vg_describe_line(out, 2, "Reason", "%s", or_none(v->reason));
	vg_describe_line(out, 2, "GPUs", "%s", or_none(v->gpus));
	vg_describe_line(out, 2, "TAP", "%s", or_none(v->tap));
	vg_describe_line(out, 2, "Host IP", "%s", or_none(v->host_ip));
	vg_describe_line(out, 2, "Guest IP", "%s", or_none(v->guest_ip));
	vg_describe_line(out, 2, "Console Log", "%s", or_none(v->console_log));
	if (v->shim_pid > 0)
		vg_describe_line(out, 2, "Shim PID", "%lld", v->shim_pid);
	else
		vg_describe_line(out, 2, "Shim PID", "<none>");
	if (v->qemu_pid > 0)
		vg_describe_line(out, 2, "QEMU PID", "%lld", v->qemu_pid);
	else
		vg_describe_line(out, 2, "QEMU PID", "<none>");
	vg_describe_line(out, 2, "Directory", "%s", or_none(v->dir));
}

static void print_sandbox(const Runtime__V1__PodSandboxStatusResponse *response, FILE *out)
{
	static const Runtime__V1__PodSandboxStatus no_status = RUNTIME__V1__POD_SANDBOX_STATUS__INIT;
	static const Runtime__V1__PodSandboxMetadata no_metadata =
		RUNTIME__V1__POD_SANDBOX_METADATA__INIT;
	const Runtime__V1__PodSandboxStatus *s = response->status ? response->status : &no_status;
	const Runtime__V1__PodSandboxMetadata *m = s->metadata ? s->metadata : &no_metadata;
	struct vg_sandbox_view view;
	vg_sandbox_view_init(&view, response);

	vg_describe_line(out, 0, "ID", "%s", s->id);
	vg_describe_line(out, 0, "Name", "%s", or_none(m->name));
	vg_describe_line(out, 0, "Namespace", "%s", or_none(m->namespace_));
	vg_describe_line(out, 0, "UID", "%s", or_none(m->uid));
	vg_describe_line(out, 0, "Attempt", "%u", m->attempt);
	vg_describe_line(out, 0, "State", "%s (CRI: %s)", view.state,
			 s->state == RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_READY ? "SANDBOX_READY"
										    : "SANDBOX_NOTREADY");
	vg_describe_line(out, 0, "Reason", "%s", or_none(view.reason));
	print_created(out, s->created_at);
	vg_describe_line(out, 0, "IP", "%s", or_none(s->network ? s->network->ip : NULL));
	if (s->runtime_handler[0])
		vg_describe_line(out, 0, "Runtime Handler", "%s", s->runtime_handler);
	struct key_value *labels = calloc(s->n_labels + 1, sizeof(*labels));
	for (size_t i = 0; labels && i < s->n_labels; i++)
		labels[i] = (struct key_value){ s->labels[i]->key, s->labels[i]->value };
	print_sorted_map(out, "Labels", labels, s->n_labels);
	struct key_value *annotations = calloc(s->n_annotations + 1, sizeof(*annotations));
	for (size_t i = 0; annotations && i < s->n_annotations; i++)
		annotations[i] = (struct key_value){ s->annotations[i]->key,
						     s->annotations[i]->value };
	print_sorted_map(out, "Annotations", annotations, s->n_annotations);
	print_vmgpu(out, &view);
	/* Other info keys, from a newer agent: shown as they came. */
	for (size_t i = 0; i < response->n_info; i++)
		if (strcmp(response->info[i]->key, "vmgpu") != 0)
			vg_describe_line(out, 0, response->info[i]->key, "%s",
					 response->info[i]->value);
	if (response->n_info > 0 && view.vmgpu == NULL)
		fprintf(out, "(the agent's \"vmgpu\" info is missing or is not a JSON object)\n");
	vg_sandbox_view_clear(&view);
}

static int describe_sandbox(struct vg_api *api, const char *id,
			    const struct vg_cli_options *opts, struct vg_error **err)
{
	cleanup_proto Runtime__V1__PodSandboxStatusResponse *response = NULL;
	int ret = vg_api_sandbox_status(api, id, &response, NULL, err);
	if (ret < 0)
		return ret;
	if (opts->output == VG_OUTPUT_JSON || opts->output == VG_OUTPUT_YAML) {
		json_object *obj = vg_sandbox_status_to_json(response);
		ret = vg_output_document(stdout, opts->output, obj, err);
		json_object_put(obj);
		return ret;
	}
	print_sandbox(response, stdout);
	return 0;
}

int vg_cmd_describe(int argc, char **argv, const char *program)
{
	struct vg_cli_options opts;
	cleanup_error struct vg_error *err = NULL;
	int ret = vg_cli_parse(argc, argv, program, describe_usage, NULL, &opts, &err);
	if (ret != 0)
		return ret > 0 ? 0 : vg_cli_fail(program, err);
	if (opts.output == VG_OUTPUT_WIDE) {
		vg_error_set(&err, EINVAL, "describe prints every field already: -o wide is for get");
		return vg_cli_fail(program, err);
	}
	if (argc - opts.first_arg != 2) {
		vg_error_set(&err, EINVAL,
			     "describe takes a resource and an ID (describe gpu 0000:1b:00.0, "
			     "describe sandbox ID); see %s describe --help",
			     program);
		return vg_cli_fail(program, err);
	}
	const char *what = argv[opts.first_arg], *id = argv[opts.first_arg + 1];
	struct vg_api api;
	vg_api_init(&api, &opts, VG_CLI_DEFAULT_TIMEOUT_S);
	if (strcmp(what, "gpu") == 0 || strcmp(what, "gpus") == 0) {
		ret = describe_gpu(&api, id, &opts, &err);
	} else if (strcmp(what, "sandbox") == 0 || strcmp(what, "sandboxes") == 0) {
		ret = describe_sandbox(&api, id, &opts, &err);
	} else {
		vg_error_set(&err, EINVAL, "unknown resource '%s': use gpu or sandbox", what);
		return vg_cli_fail(program, err);
	}
	return ret < 0 ? vg_cli_error(program, err) : 0;
}

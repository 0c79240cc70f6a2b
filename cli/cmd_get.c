/* vmgpuctl get gpus | get sandboxes: one line per object, or every field with -o json|yaml. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "cli/proto_json.h"
#include "cli/sandbox_view.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "method_paths.h"

static void get_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s get gpus [-o wide|json|yaml]\n"
		"       %s get sandboxes [-o wide|json|yaml]\n"
		"\n"
		"Lists the GPUs the agent advertises on this node, with their state and why a GPU\n"
		"cannot be used; or the node's sandboxes, with their state, GPUs and age.\n"
		"\n"
		"Flags:\n",
		program, program);
	vg_cli_print_output_flag(out, "wide (more columns), json or yaml (every field)");
	vg_cli_print_agent_flags(out, VG_CLI_DEFAULT_TIMEOUT_S);
}

static const char *device_reason(const Vmgpu__V1__GpuDevice *d)
{
	if (d->reason && d->reason[0])
		return d->reason;
	return d->n_reasons ? d->reasons[0] : "";
}

static void add_gpu_row(struct vg_table *table, const Vmgpu__V1__GpuDevice *d)
{
	char index[16], numa[16], group[16], ids[32];
	snprintf(index, sizeof(index), "%d", d->index);
	snprintf(numa, sizeof(numa), "%d", d->numa_node);
	snprintf(group, sizeof(group), "%d", d->iommu_group);
	snprintf(ids, sizeof(ids), "%s:%s", vg_output_pci_id(d->vendor_id),
		 vg_output_pci_id(d->device_id));
	size_t len = 1;
	for (size_t i = 0; i < d->n_companions; i++)
		len += strlen(d->companions[i]->bdf) + 1;
	cleanup_free char *companions = calloc(1, len);
	for (size_t i = 0; companions && i < d->n_companions; i++) {
		if (i)
			strcat(companions, ",");
		strcat(companions, d->companions[i]->bdf);
	}
	const char *row[] = {
		index,
		d->bdf,
		d->name,
		d->numa_node < 0 ? "" : numa, /* the kernel's -1: no NUMA information */
		d->state,
		d->sandbox_id,
		device_reason(d),
		d->iommu_group < 0 ? "none" : group,
		d->driver,
		d->pcie_root,
		ids,
		companions ? companions : "",
	};
	vg_table_add_row(table, row);
}

static int get_gpus(struct vg_api *api, const struct vg_cli_options *opts, struct vg_error **err)
{
	cleanup_proto Vmgpu__V1__ListDevicesResponse *list = NULL;
	int ret = vg_api_list_devices(api, &list, err);
	if (ret < 0)
		return ret;
	if (opts->output == VG_OUTPUT_JSON || opts->output == VG_OUTPUT_YAML) {
		json_object *devices = json_object_new_array();
		for (size_t i = 0; i < list->n_devices; i++)
			json_object_array_add(devices, vg_proto_to_json(&list->devices[i]->base));
		ret = vg_output_document(stdout, opts->output, devices, err);
		json_object_put(devices);
		return ret;
	}
	if (list->n_devices == 0) {
		fprintf(stderr, "No GPUs on this node (%s doctor says why).\n", opts->program);
		return 0;
	}
	static const char *const headers[] = { "INDEX",	  "BDF",    "NAME",	 "NUMA",
					       "STATE",	  "SANDBOX", "REASON",	 "IOMMU GROUP",
					       "DRIVER", "PCIE ROOT", "IDS",	 "COMPANIONS" };
	struct vg_table *table = vg_table_new(opts->output == VG_OUTPUT_WIDE ? 12 : 7, headers);
	if (table == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < list->n_devices; i++)
		add_gpu_row(table, list->devices[i]);
	vg_table_print(table, stdout);
	vg_table_free(table);
	return 0;
}

/* One sandbox of the list, with the verbose status that says what it really is. */
struct sandbox_row {
	const Runtime__V1__PodSandbox *item;
	Runtime__V1__PodSandboxStatusResponse *status; /* NULL when the status call failed */
	struct vg_error *status_err;
};

static int compare_rows(const void *a, const void *b)
{
	const struct sandbox_row *x = a, *y = b;
	if (x->item->created_at != y->item->created_at)
		return x->item->created_at < y->item->created_at ? -1 : 1;
	return strcmp(x->item->id, y->item->id);
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void add_sandbox_row(struct vg_table *table, const struct sandbox_row *row,
			    long long now)
{
	static const Runtime__V1__PodSandboxStatusResponse empty =
		RUNTIME__V1__POD_SANDBOX_STATUS_RESPONSE__INIT;
	struct vg_sandbox_view view;
	vg_sandbox_view_init(&view, row->status ? row->status : &empty);
	char age[32], shim_pid[24] = "", qemu_pid[24] = "";
	vg_format_age(row->item->created_at, now, age, sizeof(age));
	if (view.shim_pid > 0)
		snprintf(shim_pid, sizeof(shim_pid), "%lld", view.shim_pid);
	if (view.qemu_pid > 0)
		snprintf(qemu_pid, sizeof(qemu_pid), "%lld", view.qemu_pid);
	const Runtime__V1__PodSandboxMetadata *meta = row->item->metadata;
	const char *cells[] = {
		row->item->id,
		meta ? meta->name : "",
		row->status ? view.state : "unknown",
		view.gpus ? view.gpus : "",
		age,
		row->status_err ? row->status_err->msg : view.reason,
		view.guest_ip,
		view.tap,
		shim_pid,
		qemu_pid,
	};
	vg_table_add_row(table, cells);
	vg_sandbox_view_clear(&view);
}

static int print_sandboxes(const struct sandbox_row *rows, size_t n,
			   const struct vg_cli_options *opts, struct vg_error **err)
{
	if (opts->output == VG_OUTPUT_JSON || opts->output == VG_OUTPUT_YAML) {
		json_object *array = json_object_new_array();
		for (size_t i = 0; i < n; i++) {
			json_object *obj;
			if (rows[i].status) {
				obj = vg_sandbox_status_to_json(rows[i].status);
			} else {
				/* What the list said, and why there is no more. */
				obj = json_object_new_object();
				json_object_object_add(obj, "status",
						       vg_proto_to_json(&rows[i].item->base));
				json_object_object_add(
					obj, "error",
					json_object_new_string(rows[i].status_err->msg));
			}
			json_object_array_add(array, obj);
		}
		int ret = vg_output_document(stdout, opts->output, array, err);
		json_object_put(array);
		return ret;
	}
	if (n == 0) {
		fprintf(stderr, "No sandboxes on this node.\n");
		return 0;
	}
	static const char *const headers[] = { "ID",  "NAME",	"STATE", "GPUS",     "AGE",
					       "REASON", "IP", "TAP",	"SHIM PID", "QEMU PID" };
	struct vg_table *table = vg_table_new(opts->output == VG_OUTPUT_WIDE ? 10 : 6, headers);
	if (table == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	long long now = now_ns();
	for (size_t i = 0; i < n; i++)
		add_sandbox_row(table, &rows[i], now);
	vg_table_print(table, stdout);
	vg_table_free(table);
	return 0;
}

static int get_sandboxes(struct vg_api *api, const struct vg_cli_options *opts,
			 struct vg_error **err)
{
	Runtime__V1__ListPodSandboxRequest request = RUNTIME__V1__LIST_POD_SANDBOX_REQUEST__INIT;
	cleanup_proto Runtime__V1__ListPodSandboxResponse *list = NULL;
	int ret = vg_api_call(api, VG_CRI_LIST_POD_SANDBOX, &request.base,
			      &runtime__v1__list_pod_sandbox_response__descriptor,
			      (ProtobufCMessage **)&list, NULL, err);
	if (ret < 0)
		return ret;
	cleanup_free struct sandbox_row *rows = calloc(list->n_items + 1, sizeof(*rows));
	if (rows == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	size_t n = 0;
	for (size_t i = 0; i < list->n_items && ret == 0; i++) {
		struct sandbox_row *row = &rows[n];
		enum vg_grpc_code code;
		row->item = list->items[i];
		if (vg_api_sandbox_status(api, row->item->id, &row->status, &code,
					  &row->status_err) < 0) {
			if (code == VG_GRPC_NOT_FOUND) {
				/* Removed between the list and the status call. */
				vg_error_free(TAKE_PTR(row->status_err));
				continue;
			}
			if (code == VG_GRPC_UNAVAILABLE) /* the agent went away: stop here */
				ret = vg_error_set(err, ECONNREFUSED, "%s", row->status_err->msg);
		}
		n++;
	}
	if (ret == 0) {
		qsort(rows, n, sizeof(*rows), compare_rows);
		ret = print_sandboxes(rows, n, opts, err);
	}
	for (size_t i = 0; i < n; i++) {
		vg_proto_freep(&rows[i].status);
		vg_error_free(rows[i].status_err);
	}
	return ret;
}

int vg_cmd_get(int argc, char **argv, const char *program)
{
	struct vg_cli_options opts;
	cleanup_error struct vg_error *err = NULL;
	int ret = vg_cli_parse(argc, argv, program, get_usage, NULL, &opts, &err);
	if (ret != 0)
		return ret > 0 ? 0 : vg_cli_fail(program, err);
	int n_args = argc - opts.first_arg;
	const char *what = n_args > 0 ? argv[opts.first_arg] : NULL;
	if (n_args != 1) {
		vg_error_set(&err, EINVAL, "get takes one resource, gpus or sandboxes; see %s get --help",
			     program);
		return vg_cli_fail(program, err);
	}
	struct vg_api api;
	vg_api_init(&api, &opts, VG_CLI_DEFAULT_TIMEOUT_S);
	if (strcmp(what, "gpus") == 0 || strcmp(what, "gpu") == 0)
		ret = get_gpus(&api, &opts, &err);
	else if (strcmp(what, "sandboxes") == 0 || strcmp(what, "sandbox") == 0)
		ret = get_sandboxes(&api, &opts, &err);
	else {
		vg_error_set(&err, EINVAL, "unknown resource '%s': use gpus or sandboxes", what);
		return vg_cli_fail(program, err);
	}
	return ret < 0 ? vg_cli_error(program, err) : 0;
}

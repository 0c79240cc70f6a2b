#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/options.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/inventory_json.h"
#include "lib/node_scan.h"

static void doctor_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s doctor [-o json|yaml|wide] [--config FILE] [--sysfs-root DIR]\n"
		"                 [--dev-root DIR] [--proc-root DIR] [--modules-dir DIR]\n"
		"\n"
		"Checks whether this host can pass GPUs through to VMs, and why each GPU can or\n"
		"cannot be used. Exits 0 when passthrough can work, 1 when it cannot. Reads the\n"
		"host itself: the agent need not run.\n",
		program);
}

static size_t count_state(const struct vg_inventory *inventory, enum vg_gpu_state state)
{
	size_t n = 0;
	for (size_t i = 0; i < inventory->n_gpus; i++)
		n += inventory->gpus[i].state == state;
	return n;
}

static json_object *doctor_to_json(const struct vg_node_scan *scan, bool ready)
{
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "ready", json_object_new_boolean(ready));
	json_object_object_add(obj, "host", vg_host_report_to_json(&scan->host));
	json_object_object_add(obj, "functions_scanned",
			       json_object_new_int64((int64_t)scan->inventory->n_functions));
	json_object_object_add(obj, "gpus", vg_inventory_to_json(scan->inventory));
	return obj;
}

static void print_tables(const struct vg_node_scan *scan, bool wide, bool ready, FILE *out)
{
	static const char *const check_headers[] = { "CHECK", "STATUS", "DETAIL" };
	struct vg_table *checks = vg_table_new(3, check_headers);
	for (size_t i = 0; checks && i < scan->host.n_checks; i++) {
		const struct vg_check *c = &scan->host.checks[i];
		const char *row[] = { c->name, vg_check_status_name(c->status), c->detail };
		vg_table_add_row(checks, row);
	}
	if (checks)
		vg_table_print(checks, out);
	vg_table_free(checks);
	fputc('\n', out);

	static const char *const gpu_headers[] = { "INDEX", "BDF",   "NAME",	"NUMA",
						   "GROUP", "DRIVER", "STATE", "REASON",
						   "ROOT",  "IDS",    "COMPANIONS" };
	const struct vg_inventory *inv = scan->inventory;
	struct vg_table *gpus = vg_table_new(wide ? 11 : 8, gpu_headers);
	for (size_t i = 0; gpus && i < inv->n_gpus; i++) {
		const struct vg_gpu *g = &inv->gpus[i];
		char index[16], numa[16], group[16], ids[16], companions[256] = "";
		snprintf(index, sizeof(index), "%d", g->index);
		snprintf(numa, sizeof(numa), "%d", g->numa_node);
		snprintf(group, sizeof(group), "%d", g->group.number);
		snprintf(ids, sizeof(ids), "%04x:%04x", g->fn.vendor_id, g->fn.device_id);
		size_t len = 0;
		for (size_t c = 0; c < g->n_companions && len < sizeof(companions); c++)
			len += (size_t)snprintf(companions + len, sizeof(companions) - len, "%s%s",
						c ? "," : "", g->companions[c].bdf);
		const char *row[] = { index,
				      g->fn.bdf,
				      g->name,
				      numa,
				      g->group.number < 0 ? "none" : group,
				      g->fn.driver,
				      vg_gpu_state_name(g->state),
				      g->n_reasons ? g->reasons[0] : "",
				      g->pcie_root,
				      ids,
				      companions };
		vg_table_add_row(gpus, row);
	}
	if (inv->n_gpus == 0)
		fprintf(out, "No GPUs matched the filter among %zu PCI functions.\n",
			inv->n_functions);
	else if (gpus)
		vg_table_print(gpus, out);
	vg_table_free(gpus);
	fprintf(out, "\nPassthrough ready: %s (%zu of %zu GPUs available)\n", ready ? "yes" : "no",
		count_state(inv, VG_GPU_AVAILABLE), inv->n_gpus);
}

int vg_cmd_doctor(int argc, char **argv, const char *program)
{
	struct vg_cli_options opts;
	cleanup_error struct vg_error *err = NULL;
	int ret = vg_cli_parse(argc, argv, program, doctor_usage, NULL, &opts, &err);
	if (ret != 0)
		return ret > 0 ? 0 : vg_cli_fail(program, err);
	if (opts.first_arg < argc) {
		vg_error_set(&err, EINVAL, "doctor takes no arguments, got '%s'",
			     argv[opts.first_arg]);
		return vg_cli_fail(program, err);
	}
	struct vg_node_scan scan;
	if (vg_node_scan_run(&opts.config, &scan, &err) < 0) {
		vg_node_scan_clear(&scan);
		return vg_cli_fail(program, err);
	}
	bool ready = vg_node_scan_ready(&scan);
	if (opts.output == VG_OUTPUT_JSON || opts.output == VG_OUTPUT_YAML) {
		json_object *obj = doctor_to_json(&scan, ready);
		if (opts.output == VG_OUTPUT_JSON)
			vg_output_json(stdout, obj);
		else
			ret = vg_output_yaml(stdout, obj, &err);
		json_object_put(obj);
	} else {
		print_tables(&scan, opts.output == VG_OUTPUT_WIDE, ready, stdout);
	}
	vg_node_scan_clear(&scan);
	if (ret < 0)
		return vg_cli_fail(program, err);
	return ready ? 0 : 1;
}

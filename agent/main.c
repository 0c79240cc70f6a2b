#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "agent/daemon.h"
#include "lib/cleanup.h"
#include "lib/config.h"
#include "lib/error.h"
#include "lib/inventory_json.h"
#include "lib/log.h"
#include "lib/node_scan.h"

static const char usage[] =
	"Usage: vmgpu-agent [--config FILE] [--socket PATH] [--state-dir DIR] [--sysfs-root DIR]\n"
	"                   [--log-format text|json] [--list-gpus [-o json|table]]\n"
	"\n"
	"Serves the CRI-like sandbox API and the Inventory API on a unix socket until SIGTERM;\n"
	"sandboxes keep running when it stops, and the next start adopts them.\n"
	"\n"
	"  --config FILE      config file (default " VG_DEFAULT_CONFIG_PATH ", if present)\n"
	"  --socket PATH      API socket (default /run/vmgpu/vmgpu.sock)\n"
	"  --state-dir DIR    where sandboxes are recorded (default /var/lib/vmgpu)\n"
	"  --sysfs-root DIR   read PCI devices from DIR instead of /sys (a captured tree works)\n"
	"  --log-format FMT   text or json\n"
	"  --list-gpus        print the GPU inventory this agent advertises, then exit\n"
	"  --version          print the version\n";

enum {
	OPT_CONFIG = 256,
	OPT_SYSFS_ROOT,
	OPT_LOG_FORMAT,
	OPT_LIST_GPUS,
	OPT_VERSION,
	OPT_SOCKET,
	OPT_STATE_DIR
};

struct agent_args {
	const char *config_path;
	const char *sysfs_root;
	const char *socket;
	const char *state_dir;
	const char *log_format;
	const char *output;
	bool list_gpus;
};

static int parse_args(int argc, char **argv, struct agent_args *args, struct vg_error **err)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, OPT_CONFIG },
		{ "sysfs-root", required_argument, NULL, OPT_SYSFS_ROOT },
		{ "log-format", required_argument, NULL, OPT_LOG_FORMAT },
		{ "list-gpus", no_argument, NULL, OPT_LIST_GPUS },
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "state-dir", required_argument, NULL, OPT_STATE_DIR },
		{ "output", required_argument, NULL, 'o' },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
		switch (c) {
		case OPT_CONFIG:
			args->config_path = optarg;
			break;
		case OPT_SYSFS_ROOT:
			args->sysfs_root = optarg;
			break;
		case OPT_LOG_FORMAT:
			args->log_format = optarg;
			break;
		case OPT_LIST_GPUS:
			args->list_gpus = true;
			break;
		case OPT_SOCKET:
			args->socket = optarg;
			break;
		case OPT_STATE_DIR:
			args->state_dir = optarg;
			break;
		case 'o':
			args->output = optarg;
			break;
		case OPT_VERSION:
			printf("vmgpu-agent version %s\n", VMGPU_VERSION);
			return 1;
		case 'h':
			printf("%s", usage);
			return 1;
		default:
			return vg_error_set(err, EINVAL, "unknown or incomplete flag '%s'",
					    argv[optind - 1]);
		}
	}
	if (optind < argc)
		return vg_error_set(err, EINVAL, "unexpected argument '%s'", argv[optind]);
	if (args->output && strcmp(args->output, "json") != 0 && strcmp(args->output, "table") != 0)
		return vg_error_set(err, EINVAL, "output format '%s' is not one of: json, table",
				    args->output);
	return 0;
}

static int load_config(const struct agent_args *args, struct vg_config *config,
		       struct vg_error **err)
{
	vg_config_defaults(config);
	int ret = vg_config_load_file(config, args->config_path ? args->config_path
							     : VG_DEFAULT_CONFIG_PATH,
				      args->config_path == NULL, err);
	if (ret < 0)
		return ret;
	if (args->sysfs_root) {
		if (strlen(args->sysfs_root) >= sizeof(config->sysfs_root))
			return vg_error_set(err, ENAMETOOLONG, "--sysfs-root is too long");
		strcpy(config->sysfs_root, args->sysfs_root);
	}
	if (args->socket) {
		if (strlen(args->socket) >= sizeof(config->socket) || args->socket[0] != '/')
			return vg_error_set(err, EINVAL,
					    "--socket must be an absolute path shorter than %zu bytes",
					    sizeof(config->socket));
		strcpy(config->socket, args->socket);
	}
	if (args->state_dir) {
		if (strlen(args->state_dir) >= sizeof(config->state_dir) || args->state_dir[0] != '/')
			return vg_error_set(err, EINVAL, "--state-dir must be an absolute path");
		strcpy(config->state_dir, args->state_dir);
	}
	if (args->log_format)
		return vg_log_parse_format(args->log_format, &config->log_format, err);
	return 0;
}

static void print_gpu_table(const struct vg_inventory *inventory)
{
	printf("%-5s  %-13s  %-4s  %-5s  %-12s  %s\n", "INDEX", "BDF", "NUMA", "GROUP", "STATE",
	       "NAME");
	for (size_t i = 0; i < inventory->n_gpus; i++) {
		const struct vg_gpu *g = &inventory->gpus[i];
		printf("%-5d  %-13s  %-4d  %-5d  %-12s  %s\n", g->index, g->fn.bdf, g->numa_node,
		       g->group.number, vg_gpu_state_name(g->state), g->name);
		if (g->n_reasons > 0)
			printf("       reason: %s\n", g->reasons[0]);
	}
}

static int list_gpus(const struct vg_config *config, const char *output, struct vg_error **err)
{
	struct vg_node_scan scan;
	int ret = vg_node_scan_run(config, &scan, err);
	if (ret == 0) {
		if (output == NULL || strcmp(output, "json") == 0) {
			json_object *gpus = vg_inventory_to_json(scan.inventory);
			printf("%s\n", json_object_to_json_string_ext(
					       gpus, JSON_C_TO_STRING_PRETTY |
							     JSON_C_TO_STRING_SPACED |
							     JSON_C_TO_STRING_NOSLASHESCAPE));
			json_object_put(gpus);
		} else {
			print_gpu_table(scan.inventory);
		}
	}
	vg_node_scan_clear(&scan);
	return ret;
}

int main(int argc, char **argv)
{
	vg_log_setup("vmgpu-agent", VG_LOG_TEXT, VG_LOG_INFO, stderr);
	struct agent_args args = { 0 };
	cleanup_error struct vg_error *err = NULL;
	int ret = parse_args(argc, argv, &args, &err);
	if (ret > 0)
		return 0;
	if (ret < 0) {
		fprintf(stderr, "vmgpu-agent: error: %s\n%s", err->msg, usage);
		return 2;
	}
	struct vg_config config;
	if (load_config(&args, &config, &err) < 0) {
		fprintf(stderr, "vmgpu-agent: error: %s\n", err->msg);
		return 2;
	}
	vg_log_setup("vmgpu-agent", config.log_format, config.log_level, stderr);
	if (!args.list_gpus) {
		if (vg_agent_serve(&config, &err) < 0) {
			vg_err("%s", err->msg);
			return 1;
		}
		return 0;
	}
	if (list_gpus(&config, args.output, &err) < 0) {
		vg_err("list GPUs: %s", err->msg);
		return 1;
	}
	return 0;
}

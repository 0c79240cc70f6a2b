#include "cli/options.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "lib/error.h"

enum { OPT_CONFIG = 256, OPT_SYSFS_ROOT, OPT_DEV_ROOT, OPT_PROC_ROOT, OPT_MODULES_DIR };

static int set_path(char *dst, const char *value, const char *flag, struct vg_error **err)
{
	if (strlen(value) >= PATH_MAX)
		return vg_error_set(err, ENAMETOOLONG, "%s: path is too long", flag);
	strcpy(dst, value);
	return 0;
}

int vg_cli_parse(int argc, char **argv, const char *program, const char *usage,
		 struct vg_cli_options *opts, struct vg_error **err)
{
	static const struct option long_options[] = {
		{ "output", required_argument, NULL, 'o' },
		{ "config", required_argument, NULL, OPT_CONFIG },
		{ "sysfs-root", required_argument, NULL, OPT_SYSFS_ROOT },
		{ "dev-root", required_argument, NULL, OPT_DEV_ROOT },
		{ "proc-root", required_argument, NULL, OPT_PROC_ROOT },
		{ "modules-dir", required_argument, NULL, OPT_MODULES_DIR },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	memset(opts, 0, sizeof(*opts));
	opts->program = program;
	opts->output = VG_OUTPUT_TABLE;
	vg_config_defaults(&opts->config);

	const char *config_path = NULL;
	const char *sysfs_root = NULL, *dev_root = NULL, *proc_root = NULL, *modules_dir = NULL;
	optind = 1;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, "+o:h", long_options, NULL)) != -1) {
		int ret = 0;
		switch (c) {
		case 'o':
			ret = vg_output_parse(optarg, &opts->output, err);
			break;
		case OPT_CONFIG:
			config_path = optarg;
			break;
		case OPT_SYSFS_ROOT:
			sysfs_root = optarg;
			break;
		case OPT_DEV_ROOT:
			dev_root = optarg;
			break;
		case OPT_PROC_ROOT:
			proc_root = optarg;
			break;
		case OPT_MODULES_DIR:
			modules_dir = optarg;
			break;
		case 'h':
			printf("%s", usage);
			return 1;
		default:
			return vg_error_set(err, EINVAL, "unknown or incomplete flag '%s'; see %s --help",
					    argv[optind - 1], program);
		}
		if (ret < 0)
			return ret;
	}
	opts->first_arg = optind;

	int ret = config_path ? vg_config_load_file(&opts->config, config_path, false, err)
			      : vg_config_load_file(&opts->config, VG_DEFAULT_CONFIG_PATH, true, err);
	if (ret < 0)
		return ret;
	/* Flags override the file. */
	if (ret == 0 && sysfs_root)
		ret = set_path(opts->config.sysfs_root, sysfs_root, "--sysfs-root", err);
	if (ret == 0 && dev_root)
		ret = set_path(opts->config.dev_root, dev_root, "--dev-root", err);
	if (ret == 0 && proc_root)
		ret = set_path(opts->config.proc_root, proc_root, "--proc-root", err);
	if (ret == 0 && modules_dir)
		ret = set_path(opts->config.modules_dir, modules_dir, "--modules-dir", err);
	return ret;
}

#include "cli/options.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/error.h"

enum {
	OPT_CONFIG = 256,
	OPT_SYSFS_ROOT,
	OPT_DEV_ROOT,
	OPT_PROC_ROOT,
	OPT_MODULES_DIR,
	OPT_SOCKET,
	OPT_TIMEOUT,
};

static const struct option common_options[] = {
	{ "output", required_argument, NULL, 'o' },
	{ "config", required_argument, NULL, OPT_CONFIG },
	{ "socket", required_argument, NULL, OPT_SOCKET },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "sysfs-root", required_argument, NULL, OPT_SYSFS_ROOT },
	{ "dev-root", required_argument, NULL, OPT_DEV_ROOT },
	{ "proc-root", required_argument, NULL, OPT_PROC_ROOT },
	{ "modules-dir", required_argument, NULL, OPT_MODULES_DIR },
	{ "help", no_argument, NULL, 'h' },
};

/* A day: long enough for any sandbox start or log follow, short enough to catch a typo. */
#define VG_CLI_MAX_TIMEOUT_S 86400

static int set_path(char *dst, size_t size, const char *value, const char *flag,
		    struct vg_error **err)
{
	if (value[0] == '\0')
		return vg_error_set(err, EINVAL, "%s: the path is empty", flag);
	if (strlen(value) >= size)
		return vg_error_set(err, ENAMETOOLONG, "%s: the path is longer than %zu bytes", flag,
				    size - 1);
	strcpy(dst, value);
	return 0;
}

int vg_cli_parse_int(const char *text, const char *flag, long long min, long long max,
		     long long *out, struct vg_error **err)
{
	char *end = NULL;
	errno = 0;
	long long v = strtoll(text, &end, 10);
	if (text[0] == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
		return vg_error_set(err, EINVAL, "%s must be a whole number from %lld to %lld, not '%s'",
				    flag, min, max, text);
	*out = v;
	return 0;
}

/* getopt_long needs one table: the common flags, then the verb's. */
static int merge_options(const struct vg_cli_verb_flags *verb_flags, struct option *merged,
			 size_t capacity, char *shorts, size_t shorts_size)
{
	size_t n = 0;
	for (size_t i = 0; i < VG_ARRAY_SIZE(common_options); i++)
		merged[n++] = common_options[i];
	for (const struct option *o = verb_flags ? verb_flags->options : NULL; o && o->name; o++) {
		if (n + 1 >= capacity)
			return -1;
		merged[n++] = *o;
	}
	merged[n] = (struct option){ 0 };
	/* ':' first: a missing value comes back as ':' and gets its own message. */
	int len = snprintf(shorts, shorts_size, ":o:h%s",
			   verb_flags && verb_flags->short_options ? verb_flags->short_options : "");
	return len < 0 || (size_t)len >= shorts_size ? -1 : 0;
}

static int bad_flag(int c, char **argv, const struct vg_cli_options *opts, struct vg_error **err)
{
	const char *text = argv[optind - 1];
	if (c == ':')
		return vg_error_set(err, EINVAL, "flag %s needs a value; see %s %s --help", text,
				    opts->program, opts->verb);
	if (optopt && optopt < 256)
		return vg_error_set(err, EINVAL, "unknown flag -%c; see %s %s --help", optopt,
				    opts->program, opts->verb);
	return vg_error_set(err, EINVAL, "unknown flag '%s'; see %s %s --help", text, opts->program,
			    opts->verb);
}

int vg_cli_parse(int argc, char **argv, const char *program, vg_cli_usage_fn usage,
		 const struct vg_cli_verb_flags *verb_flags, struct vg_cli_options *opts,
		 struct vg_error **err)
{
	struct option long_options[64];
	char short_options[64];
	memset(opts, 0, sizeof(*opts));
	opts->program = program;
	opts->verb = argv[0];
	opts->output = VG_OUTPUT_TABLE;
	vg_config_defaults(&opts->config);
	if (merge_options(verb_flags, long_options, VG_ARRAY_SIZE(long_options), short_options,
			  sizeof(short_options)) < 0)
		return vg_error_set(err, E2BIG, "%s: too many flags (a vmgpuctl bug)", opts->verb);

	const char *config_path = NULL, *socket = NULL;
	const char *sysfs_root = NULL, *dev_root = NULL, *proc_root = NULL, *modules_dir = NULL;
	optind = 1;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
		int ret = 0;
		switch (c) {
		case 'o':
			opts->output_given = true;
			ret = vg_output_parse(optarg, &opts->output, err);
			break;
		case OPT_CONFIG:
			config_path = optarg;
			break;
		case OPT_SOCKET:
			socket = optarg;
			break;
		case OPT_TIMEOUT:
			ret = vg_cli_parse_int(optarg, "--timeout", 1, VG_CLI_MAX_TIMEOUT_S,
					       &opts->timeout_s, err);
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
			usage(stdout, program);
			return 1;
		case '?':
		case ':':
			return bad_flag(c, argv, opts, err);
		default:
			ret = verb_flags->on_flag(verb_flags->ctx, c, optarg, err);
			break;
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
	struct vg_config *cfg = &opts->config;
	if (ret == 0 && socket)
		ret = set_path(cfg->socket, sizeof(cfg->socket), socket, "--socket", err);
	if (ret == 0 && sysfs_root)
		ret = set_path(cfg->sysfs_root, sizeof(cfg->sysfs_root), sysfs_root, "--sysfs-root",
			       err);
	if (ret == 0 && dev_root)
		ret = set_path(cfg->dev_root, sizeof(cfg->dev_root), dev_root, "--dev-root", err);
	if (ret == 0 && proc_root)
		ret = set_path(cfg->proc_root, sizeof(cfg->proc_root), proc_root, "--proc-root", err);
	if (ret == 0 && modules_dir)
		ret = set_path(cfg->modules_dir, sizeof(cfg->modules_dir), modules_dir,
			       "--modules-dir", err);
	return ret;
}

int vg_cli_refuse_output(const struct vg_cli_options *opts, struct vg_error **err)
{
	if (!opts->output_given)
		return 0;
	return vg_error_set(err, EINVAL, "%s prints no table: -o is not supported here",
			    opts->verb);
}

void vg_cli_print_agent_flags(FILE *out, int default_timeout_s)
{
	fprintf(out,
		"      --socket PATH       the agent's API socket (default: the config's socket key,\n"
		"                          /run/vmgpu/vmgpu.sock)\n"
		"      --timeout SECONDS   deadline of each call to the agent (default %d)\n"
		"      --config FILE       read FILE instead of " VG_DEFAULT_CONFIG_PATH "\n",
		default_timeout_s);
}

void vg_cli_print_output_flag(FILE *out, const char *formats)
{
	fprintf(out, "  -o, --output FORMAT     %s\n", formats);
}

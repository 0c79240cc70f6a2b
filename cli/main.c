#include <libgen.h>
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "lib/error.h"
#include "lib/log.h"

static const struct {
	const char *name;
	int (*run)(int argc, char **argv, const char *program);
	const char *summary;
} verbs[] = {
	{ "get", vg_cmd_get, "list the node's GPUs or sandboxes (get gpus, get sandboxes)" },
	{ "describe", vg_cmd_describe, "show one GPU or sandbox in detail" },
	{ "run", vg_cmd_run, "start a sandbox VM with GPUs; prints its ID" },
	{ "stop", vg_cmd_stop, "stop sandboxes and give their GPUs back" },
	{ "rm", vg_cmd_rm, "remove sandboxes, stopping them first" },
	{ "logs", vg_cmd_logs, "print (or follow, -f) a sandbox's console log" },
	{ "version", vg_cmd_version, "print the client's and the agent's versions" },
	{ "doctor", vg_cmd_doctor, "check this host and every GPU for passthrough, with reasons" },
};

static void print_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s COMMAND [flags]\n"
		"\n"
		"Run and debug GPU passthrough sandboxes on this node.\n"
		"\n"
		"Commands:\n",
		program);
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		fprintf(out, "  %-10s %s\n", verbs[i].name, verbs[i].summary);
	fprintf(out,
		"\n"
		"Every command that talks to the agent takes --socket PATH (default: the config's\n"
		"socket key, /run/vmgpu/vmgpu.sock) and --timeout SECONDS.\n"
		"Run '%s COMMAND --help' for the flags of a command.\n",
		program);
}

static int print_error(const char *program, const struct vg_error *err)
{
	fprintf(stderr, "%s: error: %s\n", program, err && err->msg ? err->msg : "unknown error");
	return 1;
}

int vg_cli_fail(const char *program, const struct vg_error *err)
{
	print_error(program, err);
	return 2;
}

int vg_cli_error(const char *program, const struct vg_error *err)
{
	return print_error(program, err);
}

int main(int argc, char **argv)
{
	/* Installed as kubectl-vmgpu too; kubectl users expect "kubectl vmgpu" in messages. */
	const char *base = basename(argv[0]);
	const char *program = strcmp(base, "kubectl-vmgpu") == 0 ? "kubectl vmgpu" : "vmgpuctl";
	vg_log_setup(program, VG_LOG_TEXT, VG_LOG_WARN, stderr);
	if (argc < 2) {
		print_usage(stderr, program);
		return 2;
	}
	const char *verb = argv[1];
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (strcmp(verb, verbs[i].name) == 0)
			return verbs[i].run(argc - 1, argv + 1, program);
	if (strcmp(verb, "--version") == 0) { /* offline, unlike the version command */
		printf("%s version %s\n", program, VMGPU_VERSION);
		return 0;
	}
	if (strcmp(verb, "help") == 0 || strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0) {
		print_usage(stdout, program);
		return 0;
	}
	fprintf(stderr, "%s: error: unknown command '%s'\n\n", program, verb);
	print_usage(stderr, program);
	return 2;
}

#include <libgen.h>
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "lib/error.h"
#include "lib/log.h"

static void print_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s COMMAND [flags]\n"
		"\n"
		"Debug GPU passthrough sandboxes on this node.\n"
		"\n"
		"Commands:\n"
		"  doctor     check this host and every GPU for passthrough, with reasons\n"
		"  version    print the version\n"
		"\n"
		"Run '%s COMMAND --help' for the flags of a command.\n",
		program, program);
}

int vg_cli_fail(const char *program, const struct vg_error *err)
{
	fprintf(stderr, "%s: error: %s\n", program,
		err && err->msg ? err->msg : "unknown error");
	return 2;
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
	if (strcmp(verb, "doctor") == 0)
		return vg_cmd_doctor(argc - 1, argv + 1, program);
	if (strcmp(verb, "version") == 0 || strcmp(verb, "--version") == 0) {
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

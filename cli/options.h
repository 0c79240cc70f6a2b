/* Flags every vmgpuctl verb accepts, the verb's own flags beside them, and the config they
 * produce. Flags may come before or after the verb's arguments, as kubectl allows. */
#pragma once

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include "cli/output.h"
#include "lib/config.h"

struct vg_cli_options {
	enum vg_output_format output;
	bool output_given; /* -o was on the command line: verbs without formats refuse it */
	struct vg_config config; /* config.socket is the agent's socket, --socket included */
	long long timeout_s; /* --timeout; 0 when not given (each verb has its own default) */
	const char *program;
	const char *verb;
	int first_arg; /* index in argv of the first non-flag argument */
};

/* Per-call deadline when neither the verb nor --timeout says otherwise. */
#define VG_CLI_DEFAULT_TIMEOUT_S 30

/* Values of a verb's own long options start here, above every common flag. */
#define VG_CLI_VERB_FLAG 512

/* A verb's own flags. on_flag gets the `val` of each option (a long option's val, or the
 * character of a short one) and its argument; it returns <0 with *err set to refuse it. */
struct vg_cli_verb_flags {
	const struct option *options; /* ends with a zeroed entry; NULL for none */
	const char *short_options; /* getopt syntax, e.g. "f"; NULL for none */
	int (*on_flag)(void *ctx, int val, const char *arg, struct vg_error **err);
	void *ctx;
};

typedef void (*vg_cli_usage_fn)(FILE *out, const char *program);

/* Parses the flags after the verb (argv[0] is the verb); loads --config (or the default file
 * when present). Returns 0, 1 when --help was printed, or <0 with *err set. */
int vg_cli_parse(int argc, char **argv, const char *program, vg_cli_usage_fn usage,
		 const struct vg_cli_verb_flags *verb_flags, struct vg_cli_options *opts,
		 struct vg_error **err);

/* Strict integer flag values: the whole text, within [min, max]. */
int vg_cli_parse_int(const char *text, const char *flag, long long min, long long max,
		     long long *out, struct vg_error **err);

/* A usage error after parsing: "-o is not supported by run", a missing argument. */
int vg_cli_refuse_output(const struct vg_cli_options *opts, struct vg_error **err);

/* The common flags' help lines, for each verb's --help. */
void vg_cli_print_agent_flags(FILE *out, int default_timeout_s);
void vg_cli_print_output_flag(FILE *out, const char *formats);

/* Flags every vmgpuctl verb accepts, and the config they produce. */
#pragma once

#include "cli/output.h"
#include "lib/config.h"

struct vg_cli_options {
	enum vg_output_format output;
	struct vg_config config;
	const char *program;
	int first_arg; /* index in argv of the first non-flag argument */
};

/* Parses flags after the verb; loads --config (or the default file when present). Returns 0,
 * 1 when --help was printed, or <0 with *err set. */
int vg_cli_parse(int argc, char **argv, const char *program, const char *usage,
		 struct vg_cli_options *opts, struct vg_error **err);

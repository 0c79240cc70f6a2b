/* vmgpuctl version: this client's version and the agent's (CRI Version). */
#include <errno.h>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "cli/proto_json.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "method_paths.h"

/* The CRI API version a client announces; the kubelet sends the same. */
#define CRI_CLIENT_API_VERSION "0.1.0"
/* Version is instant: a slow answer means a stuck agent, worth saying soon. */
#define VERSION_DEFAULT_TIMEOUT_S 10

static void version_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s version [-o json|yaml]\n"
		"\n"
		"Prints this client's version and the agent's runtime name and versions. When the\n"
		"agent cannot be reached, prints the client's version and the error, and exits 1.\n"
		"\n"
		"Flags:\n",
		program);
	vg_cli_print_output_flag(out, "json or yaml");
	vg_cli_print_agent_flags(out, VERSION_DEFAULT_TIMEOUT_S);
}

static int print_version(const struct vg_cli_options *opts,
			 const Runtime__V1__VersionResponse *runtime, struct vg_error **err)
{
	if (opts->output == VG_OUTPUT_JSON || opts->output == VG_OUTPUT_YAML) {
		json_object *obj = json_object_new_object();
		json_object_object_add(obj, "client_version", json_object_new_string(VMGPU_VERSION));
		json_object_object_add(obj, "runtime",
				       runtime ? vg_proto_to_json(&runtime->base) : NULL);
		int ret = vg_output_document(stdout, opts->output, obj, err);
		json_object_put(obj);
		return ret;
	}
	vg_describe_line(stdout, 0, "Client Version", "%s", VMGPU_VERSION);
	if (runtime) {
		vg_describe_line(stdout, 0, "Runtime Name", "%s", runtime->runtime_name);
		vg_describe_line(stdout, 0, "Runtime Version", "%s", runtime->runtime_version);
		vg_describe_line(stdout, 0, "Runtime API Version", "%s",
				 runtime->runtime_api_version);
	}
	return 0;
}

int vg_cmd_version(int argc, char **argv, const char *program)
{
	struct vg_cli_options opts;
	cleanup_error struct vg_error *err = NULL;
	int ret = vg_cli_parse(argc, argv, program, version_usage, NULL, &opts, &err);
	if (ret == 0 && opts.output == VG_OUTPUT_WIDE)
		ret = vg_error_set(&err, EINVAL, "version has no wide output: use json or yaml");
	if (ret == 0 && opts.first_arg < argc)
		ret = vg_error_set(&err, EINVAL, "version takes no arguments, got '%s'",
				   argv[opts.first_arg]);
	if (ret != 0)
		return ret > 0 ? 0 : vg_cli_fail(program, err);

	struct vg_api api;
	vg_api_init(&api, &opts, VERSION_DEFAULT_TIMEOUT_S);
	Runtime__V1__VersionRequest request = RUNTIME__V1__VERSION_REQUEST__INIT;
	request.version = (char *)CRI_CLIENT_API_VERSION;
	cleanup_proto Runtime__V1__VersionResponse *response = NULL;
	cleanup_error struct vg_error *call_err = NULL;
	vg_api_call(&api, VG_CRI_VERSION, &request.base, &runtime__v1__version_response__descriptor,
		    (ProtobufCMessage **)&response, NULL, &call_err);
	/* The client's half is printed either way: it is what a bug report needs first. */
	if (print_version(&opts, response, &err) < 0)
		return vg_cli_error(program, err);
	return call_err ? vg_cli_error(program, call_err) : 0;
}

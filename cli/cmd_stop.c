/* vmgpuctl stop ID... and rm ID...: StopPodSandbox powers the VM down and gives its GPUs
 * back; RemovePodSandbox also deletes the sandbox's record (stopping it first if needed). */
#include <errno.h>
#include <string.h>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "method_paths.h"

/* The agent waits for the guest's power-down, then QEMU's quit, then SIGKILL. */
#define STOP_DEFAULT_TIMEOUT_S 120

static void stop_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s stop ID...\n"
		"\n"
		"Stops each sandbox: the guest is asked to power down, QEMU is ended if it does\n"
		"not, and the GPUs go back to their host drivers. The record stays (see rm).\n"
		"\n"
		"Flags:\n",
		program);
	vg_cli_print_agent_flags(out, STOP_DEFAULT_TIMEOUT_S);
}

static void rm_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s rm ID...\n"
		"\n"
		"Removes each sandbox, stopping it first if it still runs.\n"
		"\n"
		"Flags:\n",
		program);
	vg_cli_print_agent_flags(out, STOP_DEFAULT_TIMEOUT_S);
}

static int stop_one(struct vg_api *api, const char *id, struct vg_error **err)
{
	Runtime__V1__StopPodSandboxRequest request = RUNTIME__V1__STOP_POD_SANDBOX_REQUEST__INIT;
	request.pod_sandbox_id = (char *)id;
	cleanup_proto Runtime__V1__StopPodSandboxResponse *response = NULL;
	return vg_api_call(api, VG_CRI_STOP_POD_SANDBOX, &request.base,
			   &runtime__v1__stop_pod_sandbox_response__descriptor,
			   (ProtobufCMessage **)&response, NULL, err);
}

static int remove_one(struct vg_api *api, const char *id, struct vg_error **err)
{
	Runtime__V1__RemovePodSandboxRequest request = RUNTIME__V1__REMOVE_POD_SANDBOX_REQUEST__INIT;
	request.pod_sandbox_id = (char *)id;
	cleanup_proto Runtime__V1__RemovePodSandboxResponse *response = NULL;
	return vg_api_call(api, VG_CRI_REMOVE_POD_SANDBOX, &request.base,
			   &runtime__v1__remove_pod_sandbox_response__descriptor,
			   (ProtobufCMessage **)&response, NULL, err);
}

/* Every ID is tried; the exit code is 1 when any of them failed. */
static int for_each_id(int argc, char **argv, const char *program, vg_cli_usage_fn usage,
		       int (*call)(struct vg_api *, const char *, struct vg_error **),
		       const char *done)
{
	struct vg_cli_options opts;
	cleanup_error struct vg_error *err = NULL;
	int ret = vg_cli_parse(argc, argv, program, usage, NULL, &opts, &err);
	if (ret == 0)
		ret = vg_cli_refuse_output(&opts, &err);
	if (ret == 0 && opts.first_arg == argc)
		ret = vg_error_set(&err, EINVAL, "%s needs at least one sandbox ID; see %s %s --help",
				   argv[0], program, argv[0]);
	if (ret != 0)
		return ret > 0 ? 0 : vg_cli_fail(program, err);
	struct vg_api api;
	vg_api_init(&api, &opts, STOP_DEFAULT_TIMEOUT_S);
	int exit_code = 0;
	for (int i = opts.first_arg; i < argc; i++) {
		cleanup_error struct vg_error *call_err = NULL;
		if (call(&api, argv[i], &call_err) < 0) {
			exit_code = vg_cli_error(program, call_err);
			if (!api.reachable)
				break; /* no agent: the other IDs would fail the same way */
			continue;
		}
		printf("sandbox %s %s\n", argv[i], done);
		fflush(stdout);
	}
	return exit_code;
}

int vg_cmd_stop(int argc, char **argv, const char *program)
{
	return for_each_id(argc, argv, program, stop_usage, stop_one, "stopped");
}

int vg_cmd_rm(int argc, char **argv, const char *program)
{
	return for_each_id(argc, argv, program, rm_usage, remove_one, "removed");
}

#include "shim/sandbox_files.h"

#include <errno.h>
#include <stdbool.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "lib/atomic_file.h"
#include "lib/error.h"
#include "lib/process.h"

const char *vg_sandbox_state_name(enum vg_sandbox_state state)
{
	switch (state) {
	case VG_SANDBOX_CREATING:
		return "creating";
	case VG_SANDBOX_READY:
		return "ready";
	case VG_SANDBOX_STOPPING:
		return "stopping";
	case VG_SANDBOX_EXITED:
		return "exited";
	case VG_SANDBOX_FAILED:
		return "failed";
	}
	return "unknown";
}

int vg_sandbox_file(const struct vg_sandbox_paths *paths, const char *name, char *out,
		    size_t size, struct vg_error **err)
{
	int n = snprintf(out, size, "%s/%s", paths->dir, name);
	if (n < 0 || (size_t)n >= size)
		return vg_error_set(err, ENAMETOOLONG, "sandbox path too long: %s/%s", paths->dir,
				    name);
	return 0;
}

int vg_sandbox_paths_init(const char *dir, struct vg_sandbox_paths *paths, struct vg_error **err)
{
	memset(paths, 0, sizeof(*paths));
	if (strlen(dir) >= sizeof(paths->dir))
		return vg_error_set(err, ENAMETOOLONG, "sandbox directory path too long");
	strcpy(paths->dir, dir);
	/* Unix socket paths are limited to 108 bytes: check now rather than fail in QEMU. */
	int ret = vg_sandbox_file(paths, "qmp.sock", paths->qmp_socket, sizeof(paths->qmp_socket), err);
	if (ret == 0)
		ret = vg_sandbox_file(paths, "ready.sock", paths->ready_socket,
				      sizeof(paths->ready_socket), err);
	if (ret == 0)
		ret = vg_sandbox_file(paths, "console.log", paths->console_log,
				      sizeof(paths->console_log), err);
	if (ret == 0)
		ret = vg_sandbox_file(paths, "qemu.pid", paths->qemu_pidfile,
				      sizeof(paths->qemu_pidfile), err);
	return ret;
}

static void add_time(json_object *obj, const char *key, int64_t ns)
{
	if (ns <= 0) {
		json_object_object_add(obj, key, json_object_new_null());
		return;
	}
	char text[32];
	vg_format_time(ns, text);
	json_object_object_add(obj, key, json_object_new_string(text));
}

static int write_json(const struct vg_sandbox_paths *paths, const char *name, json_object *obj,
		      struct vg_error **err)
{
	char path[PATH_MAX];
	int ret = vg_sandbox_file(paths, name, path, sizeof(path), err);
	if (ret == 0)
		ret = vg_atomic_write_str(path,
					  json_object_to_json_string_ext(obj,
									 JSON_C_TO_STRING_PRETTY),
					  0600, err);
	json_object_put(obj);
	return ret;
}

int vg_status_write(const struct vg_sandbox_paths *paths, const char *id,
		    const struct vg_sandbox_status *status, struct vg_error **err)
{
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "id", json_object_new_string(id));
	json_object_object_add(obj, "state",
			       json_object_new_string(vg_sandbox_state_name(status->state)));
	json_object_object_add(obj, "reason", json_object_new_string(status->reason));
	json_object_object_add(obj, "shim_pid", json_object_new_int(status->shim_pid));
	json_object_object_add(obj, "shim_start_time",
			       json_object_new_int64((int64_t)status->shim_start_time));
	json_object_object_add(obj, "qemu_pid", json_object_new_int(status->qemu_pid));
	json_object_object_add(obj, "tap", json_object_new_string(status->tap));
	json_object_object_add(obj, "guest_pci", json_object_new_string(status->guest_pci));
	json_object_object_add(obj, "guest_net", json_object_new_string(status->guest_net));
	add_time(obj, "created_at", status->created_ns);
	add_time(obj, "qemu_started_at", status->qemu_exec_ns);
	add_time(obj, "ready_at", status->ready_ns);
	/* Nanosecond stamps for benchmarks; the strings above are for people. */
	json_object_object_add(obj, "created_ns", json_object_new_int64(status->created_ns));
	json_object_object_add(obj, "qemu_exec_ns", json_object_new_int64(status->qemu_exec_ns));
	json_object_object_add(obj, "ready_ns", json_object_new_int64(status->ready_ns));
	add_time(obj, "updated_at", vg_now_ns());
	return write_json(paths, "status.json", obj, err);
}

int vg_exit_record_write(const struct vg_sandbox_paths *paths, const struct vg_exit_record *rec,
			 struct vg_error **err)
{
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "exit_code", json_object_new_int(rec->exit_code));
	json_object_object_add(obj, "signal", json_object_new_int(rec->signal));
	json_object_object_add(obj, "reason", json_object_new_string(rec->reason));
	add_time(obj, "started_at", rec->started_ns);
	add_time(obj, "exited_at", rec->exited_ns);
	return write_json(paths, "exit.json", obj, err);
}

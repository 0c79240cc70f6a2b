/* One entry point per vmgpuctl verb; each returns the process exit code: 0 on success, 1 when
 * the work failed (the agent said no, or cannot be reached), 2 for a usage error. */
#pragma once

struct vg_error;

int vg_cmd_doctor(int argc, char **argv, const char *program);
int vg_cmd_get(int argc, char **argv, const char *program);
int vg_cmd_describe(int argc, char **argv, const char *program);
int vg_cmd_run(int argc, char **argv, const char *program);
int vg_cmd_stop(int argc, char **argv, const char *program);
int vg_cmd_rm(int argc, char **argv, const char *program);
int vg_cmd_logs(int argc, char **argv, const char *program);
int vg_cmd_version(int argc, char **argv, const char *program);

/* Prints "program: error: message" to stderr and returns the usage-error exit code 2. */
int vg_cli_fail(const char *program, const struct vg_error *err);
/* The same line for work that failed (a gRPC status, an unreachable agent); returns 1. */
int vg_cli_error(const char *program, const struct vg_error *err);

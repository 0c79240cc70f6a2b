/* One entry point per vmgpuctl verb; each returns the process exit code. */
#pragma once

struct vg_error;

int vg_cmd_doctor(int argc, char **argv, const char *program);
/* Prints "program: message" to stderr and returns the usage/error exit code 2. */
int vg_cli_fail(const char *program, const struct vg_error *err);

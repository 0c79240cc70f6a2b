/* Process-wide logging in text or JSON lines; set up once by main. */
#pragma once

#include <stdio.h>

enum vg_log_level { VG_LOG_DEBUG, VG_LOG_INFO, VG_LOG_WARN, VG_LOG_ERROR };
enum vg_log_format { VG_LOG_TEXT, VG_LOG_JSON };

struct vg_error;

int vg_log_parse_format(const char *s, enum vg_log_format *out, struct vg_error **err);
int vg_log_parse_level(const char *s, enum vg_log_level *out, struct vg_error **err);
void vg_log_setup(const char *program, enum vg_log_format format, enum vg_log_level min_level,
		  FILE *stream);
void vg_log(enum vg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define vg_debug(...) vg_log(VG_LOG_DEBUG, __VA_ARGS__)
#define vg_info(...) vg_log(VG_LOG_INFO, __VA_ARGS__)
#define vg_warn(...) vg_log(VG_LOG_WARN, __VA_ARGS__)
#define vg_err(...) vg_log(VG_LOG_ERROR, __VA_ARGS__)

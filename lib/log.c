#include "lib/log.h"

#include <json-c/json.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "lib/cleanup.h"
#include "lib/error.h"

/* Logging is the one process-wide setting: it is written once in main, before any thread. */
static struct {
	const char *program;
	enum vg_log_format format;
	enum vg_log_level min_level;
	FILE *stream;
} log_config = { "vmgpu", VG_LOG_TEXT, VG_LOG_INFO, NULL };

static const char *const level_names[] = { "debug", "info", "warn", "error" };

int vg_log_parse_format(const char *s, enum vg_log_format *out, struct vg_error **err)
{
	if (strcmp(s, "text") == 0)
		*out = VG_LOG_TEXT;
	else if (strcmp(s, "json") == 0)
		*out = VG_LOG_JSON;
	else
		return vg_error_set(err, EINVAL, "log format '%s' is not one of: text, json", s);
	return 0;
}

int vg_log_parse_level(const char *s, enum vg_log_level *out, struct vg_error **err)
{
	for (size_t i = 0; i < VG_ARRAY_SIZE(level_names); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum vg_log_level)i;
			return 0;
		}
	}
	return vg_error_set(err, EINVAL, "log level '%s' is not one of: debug, info, warn, error",
			    s);
}

void vg_log_setup(const char *program, enum vg_log_format format, enum vg_log_level min_level,
		  FILE *stream)
{
	log_config.program = program;
	log_config.format = format;
	log_config.min_level = min_level;
	log_config.stream = stream;
}

static void format_timestamp(char *buf, size_t size)
{
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, size - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

void vg_log(enum vg_log_level level, const char *fmt, ...)
{
	if (level < log_config.min_level)
		return;
	FILE *out = log_config.stream ? log_config.stream : stderr;
	char stamp[40];
	format_timestamp(stamp, sizeof(stamp));

	cleanup_free char *msg = NULL;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;

	if (log_config.format == VG_LOG_JSON) {
		json_object *obj = json_object_new_object();
		json_object_object_add(obj, "ts", json_object_new_string(stamp));
		json_object_object_add(obj, "level", json_object_new_string(level_names[level]));
		json_object_object_add(obj, "prog", json_object_new_string(log_config.program));
		json_object_object_add(obj, "msg", json_object_new_string(msg));
		fprintf(out, "%s\n", json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
								   JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(obj);
	} else {
		fprintf(out, "%s %s %s: %s\n", stamp, level_names[level], log_config.program, msg);
	}
	fflush(out);
}

#include "cli/output.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "lib/cleanup.h"
#include "lib/error.h"

int vg_output_parse(const char *text, enum vg_output_format *out, struct vg_error **err)
{
	static const struct {
		const char *name;
		enum vg_output_format format;
	} formats[] = {
		{ "table", VG_OUTPUT_TABLE },
		{ "wide", VG_OUTPUT_WIDE },
		{ "json", VG_OUTPUT_JSON },
		{ "yaml", VG_OUTPUT_YAML },
	};
	for (size_t i = 0; i < VG_ARRAY_SIZE(formats); i++) {
		if (strcmp(text, formats[i].name) == 0) {
			*out = formats[i].format;
			return 0;
		}
	}
	return vg_error_set(err, EINVAL, "output format '%s' is not one of: json, yaml, wide",
			    text);
}

void vg_output_json(FILE *out, json_object *obj)
{
	fprintf(out, "%s\n",
		json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY |
							    JSON_C_TO_STRING_SPACED |
							    JSON_C_TO_STRING_NOSLASHESCAPE));
}

static int emit(yaml_emitter_t *emitter, yaml_event_t *event)
{
	return yaml_emitter_emit(emitter, event) ? 0 : -1;
}

static int emit_scalar(yaml_emitter_t *emitter, const char *text, bool plain_ok)
{
	yaml_event_t event;
	yaml_scalar_event_initialize(&event, NULL, NULL, (yaml_char_t *)text, (int)strlen(text),
				     plain_ok, !plain_ok, plain_ok ? YAML_ANY_SCALAR_STYLE
								   : YAML_DOUBLE_QUOTED_SCALAR_STYLE);
	return emit(emitter, &event);
}

static int emit_node(yaml_emitter_t *emitter, json_object *obj)
{
	yaml_event_t event;
	switch (json_object_get_type(obj)) {
	case json_type_object:
		yaml_mapping_start_event_initialize(&event, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
		if (emit(emitter, &event) < 0)
			return -1;
		json_object_object_foreach(obj, key, value)
		{
			if (emit_scalar(emitter, key, true) < 0 || emit_node(emitter, value) < 0)
				return -1;
		}
		yaml_mapping_end_event_initialize(&event);
		return emit(emitter, &event);
	case json_type_array:
		yaml_sequence_start_event_initialize(&event, NULL, NULL, 1,
						     YAML_BLOCK_SEQUENCE_STYLE);
		if (emit(emitter, &event) < 0)
			return -1;
		for (size_t i = 0; i < json_object_array_length(obj); i++)
			if (emit_node(emitter, json_object_array_get_idx(obj, i)) < 0)
				return -1;
		yaml_sequence_end_event_initialize(&event);
		return emit(emitter, &event);
	case json_type_null:
		return emit_scalar(emitter, "null", true);
	case json_type_string:
		/* Quoted, so "0x10de" or "true" stay strings for a YAML reader. */
		return emit_scalar(emitter, json_object_get_string(obj), false);
	default:
		return emit_scalar(emitter, json_object_get_string(obj), true);
	}
}

static int write_to_file(void *data, unsigned char *buffer, size_t size)
{
	return fwrite(buffer, 1, size, data) == size;
}

int vg_output_yaml(FILE *out, json_object *obj, struct vg_error **err)
{
	yaml_emitter_t emitter;
	yaml_event_t event;
	if (!yaml_emitter_initialize(&emitter))
		return vg_error_set(err, ENOMEM, "libyaml: cannot initialise the emitter");
	yaml_emitter_set_output(&emitter, write_to_file, out);
	yaml_emitter_set_unicode(&emitter, 1);
	/* One line per scalar: libyaml folds long strings (reasons) at 80 columns otherwise, and a
	 * folded line defeats grep. */
	yaml_emitter_set_width(&emitter, -1);
	int ret = 0;
	yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING);
	ret |= emit(&emitter, &event);
	yaml_document_start_event_initialize(&event, NULL, NULL, NULL, 1);
	ret |= ret ? ret : emit(&emitter, &event);
	ret |= ret ? ret : emit_node(&emitter, obj);
	yaml_document_end_event_initialize(&event, 1);
	ret |= ret ? ret : emit(&emitter, &event);
	yaml_stream_end_event_initialize(&event);
	ret |= ret ? ret : emit(&emitter, &event);
	if (ret < 0)
		ret = vg_error_set(err, EIO, "libyaml: %s",
				   emitter.problem ? emitter.problem : "emit failed");
	yaml_emitter_delete(&emitter);
	return ret;
}

int vg_output_document(FILE *out, enum vg_output_format format, json_object *obj,
		       struct vg_error **err)
{
	if (format == VG_OUTPUT_YAML)
		return vg_output_yaml(out, obj, err);
	vg_output_json(out, obj);
	return 0;
}

struct vg_table {
	size_t n_columns;
	size_t n_rows;
	char **cells; /* row-major, the header is row 0 */
};

struct vg_table *vg_table_new(size_t n_columns, const char *const *headers)
{
	struct vg_table *table = calloc(1, sizeof(*table));
	if (table == NULL)
		return NULL;
	table->n_columns = n_columns;
	vg_table_add_row(table, headers);
	return table;
}

void vg_table_add_row(struct vg_table *table, const char *const *cells)
{
	char **grown = realloc(table->cells,
			       (table->n_rows + 1) * table->n_columns * sizeof(*table->cells));
	if (grown == NULL)
		return;
	table->cells = grown;
	for (size_t c = 0; c < table->n_columns; c++)
		table->cells[table->n_rows * table->n_columns + c] =
			strdup(cells[c] && cells[c][0] ? cells[c] : "-");
	table->n_rows++;
}

void vg_table_print(const struct vg_table *table, FILE *out)
{
	size_t widths[32] = { 0 };
	size_t n_columns = table->n_columns < 32 ? table->n_columns : 32;
	for (size_t r = 0; r < table->n_rows; r++)
		for (size_t c = 0; c < n_columns; c++) {
			const char *cell = table->cells[r * table->n_columns + c];
			size_t len = cell ? strlen(cell) : 0;
			if (len > widths[c])
				widths[c] = len;
		}
	for (size_t r = 0; r < table->n_rows; r++) {
		for (size_t c = 0; c < n_columns; c++) {
			const char *cell = table->cells[r * table->n_columns + c];
			if (c + 1 == n_columns)
				fprintf(out, "%s\n", cell ? cell : "");
			else
				fprintf(out, "%-*s   ", (int)widths[c], cell ? cell : "");
		}
	}
}

void vg_table_free(struct vg_table *table)
{
	if (table == NULL)
		return;
	for (size_t i = 0; i < table->n_rows * table->n_columns; i++)
		free(table->cells[i]);
	free(table->cells);
	free(table);
}

const char *vg_output_pci_id(const char *id)
{
	if (id == NULL)
		return "";
	return strncmp(id, "0x", 2) == 0 ? id + 2 : id;
}

void vg_format_age(long long created_ns, long long now_ns, char *out, size_t size)
{
	if (created_ns <= 0) {
		snprintf(out, size, "<unknown>");
		return;
	}
	long long s = (now_ns - created_ns) / 1000000000LL;
	if (s < 0)
		s = 0; /* a clock skewed between agent and client reads as brand new */
	/* kubectl's HumanDuration: more precision for young objects, less for old ones. */
	if (s < 120)
		snprintf(out, size, "%llds", s);
	else if (s < 600)
		snprintf(out, size, "%lldm%llds", s / 60, s % 60);
	else if (s < 3 * 3600)
		snprintf(out, size, "%lldm", s / 60);
	else if (s < 8 * 3600)
		snprintf(out, size, "%lldh%lldm", s / 3600, s % 3600 / 60);
	else if (s < 48 * 3600)
		snprintf(out, size, "%lldh", s / 3600);
	else if (s < 8 * 86400)
		snprintf(out, size, "%lldd%lldh", s / 86400, s % 86400 / 3600);
	else
		snprintf(out, size, "%lldd", s / 86400);
}

/* Wide enough for the longest key we print ("Runtime API Version:"). */
#define DESCRIBE_VALUE_COLUMN 22

void vg_describe_line(FILE *out, int indent, const char *key, const char *fmt, ...)
{
	int key_len = (int)strlen(key) + 1; /* with the colon */
	int pad = DESCRIBE_VALUE_COLUMN - indent - key_len;
	fprintf(out, "%*s%s:", indent, "", key);
	fprintf(out, "%*s", pad > 1 ? pad : 1, "");
	va_list ap;
	va_start(ap, fmt);
	vfprintf(out, fmt, ap);
	va_end(ap);
	fputc('\n', out);
}

void vg_describe_section(FILE *out, int indent, const char *key)
{
	fprintf(out, "%*s%s:\n", indent, "", key);
}

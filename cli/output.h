/* Human and machine output for vmgpuctl: kubectl-style tables, JSON and YAML. */
#pragma once

#include <json-c/json.h>
#include <stddef.h>
#include <stdio.h>

struct vg_error;

enum vg_output_format { VG_OUTPUT_TABLE, VG_OUTPUT_WIDE, VG_OUTPUT_JSON, VG_OUTPUT_YAML };

int vg_output_parse(const char *text, enum vg_output_format *out, struct vg_error **err);
void vg_output_json(FILE *out, json_object *obj);
int vg_output_yaml(FILE *out, json_object *obj, struct vg_error **err);
/* obj as JSON or YAML, whichever format says (it must be one of the two). */
int vg_output_document(FILE *out, enum vg_output_format format, json_object *obj,
		       struct vg_error **err);

/* A table whose columns are sized to their widest cell, as kubectl prints them. */
struct vg_table;
struct vg_table *vg_table_new(size_t n_columns, const char *const *headers);
void vg_table_add_row(struct vg_table *table, const char *const *cells);
void vg_table_print(const struct vg_table *table, FILE *out);
void vg_table_free(struct vg_table *table);

/* A PCI id as people write it: "0x10de" and "10de" both give "10de"; NULL gives "". */
const char *vg_output_pci_id(const char *id);

/* kubectl's age: "42s", "5m12s", "3h", "12d", from a creation time in ns since the epoch. */
void vg_format_age(long long created_ns, long long now_ns, char *out, size_t size);

/* One "Key:  value" line of a describe view; indent is 0 for a top-level key and 2 per level
 * below it. Values of one level start in the same column. */
void vg_describe_line(FILE *out, int indent, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* A key whose value is the indented block that follows ("Labels:", "Companions:"). */
void vg_describe_section(FILE *out, int indent, const char *key);

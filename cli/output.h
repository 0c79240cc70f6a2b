/* Human and machine output for vmgpuctl: kubectl-style tables, JSON and YAML. */
#pragma once

#include <json-c/json.h>
#include <stdio.h>

struct vg_error;

enum vg_output_format { VG_OUTPUT_TABLE, VG_OUTPUT_WIDE, VG_OUTPUT_JSON, VG_OUTPUT_YAML };

int vg_output_parse(const char *text, enum vg_output_format *out, struct vg_error **err);
void vg_output_json(FILE *out, json_object *obj);
int vg_output_yaml(FILE *out, json_object *obj, struct vg_error **err);

/* A table whose columns are sized to their widest cell, as kubectl prints them. */
struct vg_table;
struct vg_table *vg_table_new(size_t n_columns, const char *const *headers);
void vg_table_add_row(struct vg_table *table, const char *const *cells);
void vg_table_print(const struct vg_table *table, FILE *out);
void vg_table_free(struct vg_table *table);

/* Small helpers for protobuf-c at the API edge: packing replies, maps from and to json-c. */
#pragma once

#include <json-c/json.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

struct vg_grpc_call;

/* Every generated map entry is {base, key, value}: one shape serves all of them. */
struct vg_map_entry {
	ProtobufCMessage base;
	char *key;
	char *value;
};

struct vg_map {
	struct vg_map_entry **entries; /* what the generated struct's map field points at */
	struct vg_map_entry *block;
	size_t n;
};

/* Builds entries from a json object of strings; init is the entry type's __INIT value. Strings
 * point into obj, which must outlive the map's use. */
int vg_map_from_json(json_object *obj, const void *init, struct vg_map *map);
void vg_map_clear(struct vg_map *map);
/* The reverse: a request's map (n entries) as a json object of strings. */
json_object *vg_map_to_json(void *const *entries, size_t n);

/* Packs msg and replies with it. */
void vg_reply_message(struct vg_grpc_call *call, const ProtobufCMessage *msg);

/* Any protobuf-c message as a json-c object, for -o json and -o yaml: keys are the .proto field
 * names, every field is present (proto3 has no "unset"), enums are their value names, maps are
 * objects and 64-bit integers stay numbers. */
#pragma once

#include <json-c/json.h>
#include <protobuf-c/protobuf-c.h>

/* Returns a new object (the caller puts it), or NULL when out of memory. */
json_object *vg_proto_to_json(const ProtobufCMessage *message);

#include "cli/proto_json.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* protoc generates a map<K, V> field as a repeated "XEntry" message with fields key and value. */
static bool is_map_entry(const ProtobufCMessageDescriptor *desc)
{
	size_t len = strlen(desc->short_name);
	return desc->n_fields == 2 && len > 5 && strcmp(desc->short_name + len - 5, "Entry") == 0 &&
	       strcmp(desc->fields[0].name, "key") == 0 &&
	       strcmp(desc->fields[1].name, "value") == 0 &&
	       desc->fields[0].type == PROTOBUF_C_TYPE_STRING;
}

static size_t element_size(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		return 4;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return 8;
	case PROTOBUF_C_TYPE_FLOAT:
		return sizeof(float);
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_MESSAGE:
	default:
		return sizeof(void *);
	}
}

/* Bytes are base64 in the proto3 JSON mapping; none of our APIs has one today. */
static json_object *bytes_to_json(const ProtobufCBinaryData *data)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t out_len = (data->len + 2) / 3 * 4;
	char *text = malloc(out_len + 1);
	if (text == NULL)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < data->len; i += 3) {
		uint32_t chunk = (uint32_t)data->data[i] << 16;
		if (i + 1 < data->len)
			chunk |= (uint32_t)data->data[i + 1] << 8;
		if (i + 2 < data->len)
			chunk |= data->data[i + 2];
		text[o++] = alphabet[chunk >> 18 & 63];
		text[o++] = alphabet[chunk >> 12 & 63];
		text[o++] = i + 1 < data->len ? alphabet[chunk >> 6 & 63] : '=';
		text[o++] = i + 2 < data->len ? alphabet[chunk & 63] : '=';
	}
	text[o] = '\0';
	json_object *obj = json_object_new_string(text);
	free(text);
	return obj;
}

static json_object *value_to_json(const ProtobufCFieldDescriptor *field, const void *p)
{
	switch (field->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		return json_object_new_int(*(const int32_t *)p);
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return json_object_new_int64(*(const uint32_t *)p);
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		return json_object_new_int64(*(const int64_t *)p);
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return json_object_new_uint64(*(const uint64_t *)p);
	case PROTOBUF_C_TYPE_FLOAT:
		return json_object_new_double(*(const float *)p);
	case PROTOBUF_C_TYPE_DOUBLE:
		return json_object_new_double(*(const double *)p);
	case PROTOBUF_C_TYPE_BOOL:
		return json_object_new_boolean(*(const protobuf_c_boolean *)p);
	case PROTOBUF_C_TYPE_ENUM: {
		int v = *(const int *)p;
		const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(field->descriptor,
										    v);
		/* A value newer than our .proto: its number is all we have. */
		return ev ? json_object_new_string(ev->name) : json_object_new_int(v);
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(const char *const *)p;
		return json_object_new_string(s ? s : "");
	}
	case PROTOBUF_C_TYPE_BYTES:
		return bytes_to_json(p);
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *m = *(const ProtobufCMessage *const *)p;
		return m ? vg_proto_to_json(m) : json_object_new_null();
	}
	}
	return json_object_new_null();
}

static json_object *repeated_to_json(const ProtobufCFieldDescriptor *field, const char *base)
{
	size_t n = *(const size_t *)(base + field->quantifier_offset);
	const char *array = *(const char *const *)(base + field->offset);
	bool map = field->type == PROTOBUF_C_TYPE_MESSAGE && is_map_entry(field->descriptor);
	json_object *out = map ? json_object_new_object() : json_object_new_array();
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		const void *element = array + i * element_size(field->type);
		if (map) {
			const ProtobufCMessage *entry = *(const ProtobufCMessage *const *)element;
			const ProtobufCMessageDescriptor *desc = field->descriptor;
			const char *key = *(const char *const *)((const char *)entry +
								 desc->fields[0].offset);
			json_object_object_add(out, key ? key : "",
					       value_to_json(&desc->fields[1],
							     (const char *)entry +
								     desc->fields[1].offset));
		} else {
			json_object_array_add(out, value_to_json(field, element));
		}
	}
	return out;
}

json_object *vg_proto_to_json(const ProtobufCMessage *message)
{
	const ProtobufCMessageDescriptor *desc = message->descriptor;
	const char *base = (const char *)message;
	json_object *obj = json_object_new_object();
	if (obj == NULL)
		return NULL;
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *field = &desc->fields[i];
		if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			/* Only the member that is set belongs to the object. */
			if (*(const uint32_t *)(base + field->quantifier_offset) != field->id)
				continue;
		} else if (field->label == PROTOBUF_C_LABEL_OPTIONAL &&
			   field->type != PROTOBUF_C_TYPE_MESSAGE &&
			   field->type != PROTOBUF_C_TYPE_STRING &&
			   !*(const protobuf_c_boolean *)(base + field->quantifier_offset)) {
			continue; /* proto2 has_ flag clear */
		}
		json_object *value = field->label == PROTOBUF_C_LABEL_REPEATED
					     ? repeated_to_json(field, base)
					     : value_to_json(field, base + field->offset);
		json_object_object_add(obj, field->name, value);
	}
	return obj;
}

#include "agent/api_util.h"

#include <stdlib.h>
#include <string.h>

#include "lib/grpc/vg_grpc.h"

int vg_map_from_json(json_object *obj, const void *init, struct vg_map *map)
{
	memset(map, 0, sizeof(*map));
	size_t n = obj ? (size_t)json_object_object_length(obj) : 0;
	if (n == 0)
		return 0;
	map->entries = calloc(n, sizeof(*map->entries));
	map->block = calloc(n, sizeof(*map->block));
	if (map->entries == NULL || map->block == NULL) {
		vg_map_clear(map);
		return -1;
	}
	json_object_object_foreach(obj, key, value)
	{
		struct vg_map_entry *entry = &map->block[map->n];
		memcpy(entry, init, sizeof(*entry));
		entry->key = key;
		entry->value = (char *)json_object_get_string(value);
		map->entries[map->n++] = entry;
	}
	return 0;
}

void vg_map_clear(struct vg_map *map)
{
	free(map->entries);
	free(map->block);
	memset(map, 0, sizeof(*map));
}

json_object *vg_map_to_json(void *const *entries, size_t n)
{
	json_object *obj = json_object_new_object();
	for (size_t i = 0; i < n; i++) {
		const struct vg_map_entry *entry = entries[i];
		json_object_object_add(obj, entry->key ? entry->key : "",
				       json_object_new_string(entry->value ? entry->value : ""));
	}
	return obj;
}

void vg_reply_message(struct vg_grpc_call *call, const ProtobufCMessage *msg)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(len ? len : 1);
	if (buf == NULL) {
		vg_grpc_call_fail(call, VG_GRPC_INTERNAL, "out of memory");
		return;
	}
	protobuf_c_message_pack(msg, buf);
	vg_grpc_call_reply(call, buf, len);
	free(buf);
}

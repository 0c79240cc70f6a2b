/* libFuzzer entry for every text parser that takes input from outside: one binary, the first
 * input byte picks the parser. Built by hack/fuzz.sh with clang (-fsanitize=fuzzer,address,
 * undefined); a crash, a leak or UB is a finding. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/gpu_request.h"
#include "lib/bdf.h"
#include "lib/config.h"
#include "lib/error.h"
#include "lib/iommu_group.h"
#include "shim/ready.h"
#include "shim/spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Annotations arrive as "key=value" lines. */
static void fuzz_annotations(char *text)
{
	struct vg_kv kv[32];
	size_t n = 0;
	for (char *line = strtok(text, "\n"); line && n < 32; line = strtok(NULL, "\n")) {
		char *eq = strchr(line, '=');
		if (eq)
			*eq = '\0';
		kv[n++] = (struct vg_kv){ line, eq ? eq + 1 : NULL };
	}
	struct vg_gpu_request gpu;
	struct vg_vm_shape vm;
	struct vg_error *err = NULL;
	vg_sandbox_request_parse(kv, n, &gpu, &vm, &err);
	vg_error_free(err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	char *text = malloc(size);
	memcpy(text, data + 1, size - 1);
	text[size - 1] = '\0';
	struct vg_error *err = NULL;
	switch (data[0] % 7) {
	case 0: {
		struct vg_bdf bdf;
		vg_bdf_parse(text, data[0] & 0x80, &bdf, &err);
		break;
	}
	case 1: {
		struct vg_config config;
		vg_config_defaults(&config);
		vg_config_load_string(&config, text, size - 1, "fuzz.yaml", &err);
		break;
	}
	case 2:
		fuzz_annotations(text);
		break;
	case 3: {
		struct vg_selector sel;
		vg_selector_parse(text, &sel, &err);
		break;
	}
	case 4: {
		static struct vg_sandbox_spec spec;
		vg_spec_parse_json(text, &spec, &err);
		break;
	}
	case 5: {
		struct vg_ready_report report;
		vg_ready_parse(text, "fuzz-1", &report, &err);
		break;
	}
	case 6: {
		struct vg_reserved_region *regions = NULL;
		size_t n = 0;
		vg_iommu_parse_reserved_regions(text, &regions, &n, &err);
		free(regions);
		break;
	}
	}
	vg_error_free(err);
	free(text);
	return 0;
}

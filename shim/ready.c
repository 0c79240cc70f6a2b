#include "shim/ready.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/error.h"
#include "shim/spec.h"

static const char *field(const char *line, const char *name, size_t *len)
{
	size_t name_len = strlen(name);
	for (const char *p = line; (p = strstr(p, name)) != NULL; p++) {
		if ((p == line || p[-1] == ' ') && p[name_len] == '=') {
			const char *value = p + name_len + 1;
			*len = strcspn(value, " \r\n");
			return value;
		}
	}
	return NULL;
}

static int parse_pci_list(const char *value, size_t len, struct vg_ready_report *report,
			  struct vg_error **err)
{
	const char *p = value, *end = value + len;
	while (p < end) {
		unsigned vendor, device;
		int used = 0;
		if (sscanf(p, "%4x:%4x%n", &vendor, &device, &used) != 2 || used != 9)
			return vg_error_set(err, EPROTO, "ready line: bad PCI id list '%.*s'",
					    (int)len, value);
		if (report->n_pci < VG_READY_MAX_PCI)
			report->pci[report->n_pci++] = (uint32_t)vendor << 16 | device;
		p += used;
		if (p < end && *p == ',')
			p++;
	}
	return 0;
}

int vg_ready_parse(const char *line, const char *sandbox_id, struct vg_ready_report *report,
		   struct vg_error **err)
{
	memset(report, 0, sizeof(*report));
	bool ready = strncmp(line, "VMGPU-READY ", 12) == 0;
	if (!ready && strncmp(line, "VMGPU-FAILED ", 13) != 0)
		return vg_error_set(err, EPROTO, "unexpected line on the ready channel: '%.80s'",
				    line);
	size_t len = 0;
	const char *id = field(line, "id", &len);
	if (id == NULL || len != strlen(sandbox_id) || strncmp(id, sandbox_id, len) != 0)
		return vg_error_set(err, EPROTO, "ready line is for another sandbox: '%.80s'",
				    line);
	report->ready = ready;
	if (!ready) {
		const char *reason = strstr(line, " reason=");
		snprintf(report->reason, sizeof(report->reason), "%s",
			 reason ? reason + 8 : "no reason given");
		report->reason[strcspn(report->reason, "\r\n")] = '\0';
		return 0;
	}
	const char *net = field(line, "net", &len);
	snprintf(report->net, sizeof(report->net), "%.*s", net ? (int)len : 4,
		 net ? net : "none");
	const char *pci = field(line, "pci", &len);
	return pci ? parse_pci_list(pci, len, report, err) : 0;
}

int vg_ready_check_gpus(const struct vg_ready_report *report, const struct vg_sandbox_spec *spec,
			struct vg_error **err)
{
	/* Two GPUs with the same ids need two entries: count, do not just look up. */
	bool used[VG_READY_MAX_PCI] = { false };
	for (size_t g = 0; g < spec->n_gpus; g++) {
		const struct vg_spec_gpu *gpu = &spec->gpus[g];
		uint32_t want = (uint32_t)gpu->vendor_id << 16 | gpu->device_id;
		bool found = false;
		for (size_t i = 0; i < report->n_pci && !found; i++) {
			if (!used[i] && report->pci[i] == want) {
				used[i] = true;
				found = true;
			}
		}
		if (!found)
			return vg_error_set(err, ENODEV,
					    "the guest does not see GPU %s (%04x:%04x): it booted "
					    "but the device is missing from its PCI bus",
					    gpu->bdf, gpu->vendor_id, gpu->device_id);
	}
	return 0;
}

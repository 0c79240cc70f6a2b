#include "lib/gpu_filter.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/error.h"

void vg_gpu_filter_clear(struct vg_gpu_filter *filter)
{
	memset(filter, 0, sizeof(*filter));
}

void vg_gpu_filter_default(struct vg_gpu_filter *filter)
{
	vg_gpu_filter_clear(filter);
	filter->vendors[filter->n_vendors++] = 0x10de;
	filter->classes[filter->n_classes++] = 0x0300;
	filter->classes[filter->n_classes++] = 0x0302;
}

/* Exactly 4 hex digits, with an optional 0x prefix. */
static int parse_hex16(const char *text, uint16_t *out)
{
	const char *p = text;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
		p += 2;
	if (strlen(p) != 4)
		return -1;
	char *end = NULL;
	unsigned long v = strtoul(p, &end, 16);
	if (end == NULL || *end != '\0' || p[0] == '-' || p[0] == '+')
		return -1;
	*out = (uint16_t)v;
	return 0;
}

static int check_room(size_t count, const char *what, struct vg_error **err)
{
	if (count >= VG_FILTER_MAX)
		return vg_error_set(err, E2BIG, "too many %s in the GPU filter (at most %d)", what,
				    VG_FILTER_MAX);
	return 0;
}

int vg_gpu_filter_add_vendor(struct vg_gpu_filter *filter, const char *text, struct vg_error **err)
{
	uint16_t v;
	if (parse_hex16(text, &v) < 0)
		return vg_error_set(err, EINVAL,
				    "vendor '%s' is not a 16-bit hex PCI vendor id like 0x10de", text);
	int ret = check_room(filter->n_vendors, "vendors", err);
	if (ret < 0)
		return ret;
	filter->vendors[filter->n_vendors++] = v;
	return 0;
}

int vg_gpu_filter_add_class(struct vg_gpu_filter *filter, const char *text, struct vg_error **err)
{
	uint16_t v;
	if (parse_hex16(text, &v) < 0)
		return vg_error_set(err, EINVAL,
				    "class '%s' is not a PCI base class and subclass like 0x0302",
				    text);
	int ret = check_room(filter->n_classes, "classes", err);
	if (ret < 0)
		return ret;
	filter->classes[filter->n_classes++] = v;
	return 0;
}

int vg_gpu_filter_add_id(struct vg_gpu_filter *filter, const char *text, struct vg_error **err)
{
	const char *colon = strchr(text, ':');
	char vendor[8], device[8];
	struct vg_pci_id id;
	if (colon == NULL || (size_t)(colon - text) >= sizeof(vendor) ||
	    strlen(colon + 1) >= sizeof(device))
		goto bad;
	memcpy(vendor, text, (size_t)(colon - text));
	vendor[colon - text] = '\0';
	strcpy(device, colon + 1);
	if (parse_hex16(vendor, &id.vendor) < 0 || parse_hex16(device, &id.device) < 0)
		goto bad;
	int ret = check_room(filter->n_ids, "ids", err);
	if (ret < 0)
		return ret;
	filter->ids[filter->n_ids++] = id;
	return 0;
bad:
	return vg_error_set(err, EINVAL, "id '%s' is not a vendor:device pair like 1234:11e8", text);
}

int vg_gpu_filter_add_bdf(struct vg_gpu_filter *filter, const char *text, struct vg_error **err)
{
	struct vg_bdf bdf;
	int ret = vg_bdf_parse(text, false, &bdf, err);
	if (ret < 0)
		return ret;
	ret = check_room(filter->n_bdfs, "BDFs", err);
	if (ret < 0)
		return ret;
	filter->bdfs[filter->n_bdfs++] = bdf;
	return 0;
}

bool vg_gpu_filter_match(const struct vg_gpu_filter *filter, const struct vg_bdf *bdf,
			 uint16_t vendor, uint16_t device, uint32_t class_code)
{
	for (size_t i = 0; i < filter->n_bdfs; i++)
		if (vg_bdf_compare(&filter->bdfs[i], bdf) == 0)
			return true;
	for (size_t i = 0; i < filter->n_ids; i++)
		if (filter->ids[i].vendor == vendor && filter->ids[i].device == device)
			return true;
	bool vendor_ok = false, class_ok = false;
	for (size_t i = 0; i < filter->n_vendors; i++)
		vendor_ok |= filter->vendors[i] == vendor;
	for (size_t i = 0; i < filter->n_classes; i++)
		class_ok |= filter->classes[i] == (uint16_t)(class_code >> 8);
	return vendor_ok && class_ok;
}

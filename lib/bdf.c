#include "lib/bdf.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "lib/error.h"

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Parses exactly [min,max] hex digits ending at `stop`; returns the count or -1. */
static int parse_hex_field(const char *s, size_t min, size_t max, char stop, uint32_t *out)
{
	uint32_t v = 0;
	size_t i = 0;
	for (; s[i] != '\0' && s[i] != stop; i++) {
		int h = hex_value(s[i]);
		if (h < 0 || i >= max)
			return -1;
		v = (v << 4) | (uint32_t)h;
	}
	if (i < min || s[i] != stop)
		return -1;
	*out = v;
	return (int)i;
}

int vg_bdf_parse(const char *s, bool allow_short, struct vg_bdf *out, struct vg_error **err)
{
	if (s == NULL)
		return vg_error_set(err, EINVAL, "missing PCI address");
	uint32_t domain = 0, bus, dev, fn;
	const char *p = s;
	const char *first_colon = strchr(s, ':');
	bool has_domain = first_colon != NULL && strchr(first_colon + 1, ':') != NULL;
	int n;
	if (has_domain) {
		n = parse_hex_field(p, 4, 8, ':', &domain);
		if (n < 0)
			goto bad;
		p += n + 1;
	} else if (!allow_short) {
		goto bad;
	}
	n = parse_hex_field(p, 2, 2, ':', &bus);
	if (n < 0)
		goto bad;
	p += n + 1;
	n = parse_hex_field(p, 2, 2, '.', &dev);
	if (n < 0 || dev > 0x1f)
		goto bad;
	p += n + 1;
	n = parse_hex_field(p, 1, 1, '\0', &fn);
	if (n < 0 || fn > 7)
		goto bad;
	out->domain = domain;
	out->bus = (uint8_t)bus;
	out->device = (uint8_t)dev;
	out->function = (uint8_t)fn;
	return 0;
bad:
	return vg_error_set(err, EINVAL,
			    "'%.64s' is not a PCI address; expected DDDD:BB:DD.F, for example "
			    "0000:3b:00.0",
			    s);
}

bool vg_bdf_is_valid(const char *s)
{
	struct vg_bdf bdf;
	return vg_bdf_parse(s, false, &bdf, NULL) == 0;
}

void vg_bdf_format(const struct vg_bdf *bdf, char out[VG_BDF_STRLEN])
{
	snprintf(out, VG_BDF_STRLEN, "%04x:%02x:%02x.%u", bdf->domain, bdf->bus, bdf->device,
		 bdf->function);
}

int vg_bdf_compare(const struct vg_bdf *a, const struct vg_bdf *b)
{
	if (a->domain != b->domain)
		return a->domain < b->domain ? -1 : 1;
	if (a->bus != b->bus)
		return a->bus < b->bus ? -1 : 1;
	if (a->device != b->device)
		return a->device < b->device ? -1 : 1;
	if (a->function != b->function)
		return a->function < b->function ? -1 : 1;
	return 0;
}

bool vg_bdf_same_slot(const struct vg_bdf *a, const struct vg_bdf *b)
{
	return a->domain == b->domain && a->bus == b->bus && a->device == b->device;
}

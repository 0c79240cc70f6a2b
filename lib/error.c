#include "lib/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int normalize_code(int code)
{
	if (code < 0)
		code = -code;
	return code == 0 ? EIO : code;
}

int vg_error_setv(struct vg_error **err, int code, const char *fmt, va_list ap)
{
	code = normalize_code(code);
	if (err == NULL || *err != NULL)
		return -code;
	struct vg_error *e = calloc(1, sizeof(*e));
	if (e == NULL)
		return -code;
	e->code = code;
	if (vasprintf(&e->msg, fmt, ap) < 0)
		e->msg = NULL;
	*err = e;
	return -code;
}

int vg_error_set(struct vg_error **err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int ret = vg_error_setv(err, code, fmt, ap);
	va_end(ap);
	return ret;
}

int vg_error_set_errno(struct vg_error **err, int code, const char *fmt, ...)
{
	char *head = NULL;
	va_list ap;
	va_start(ap, fmt);
	if (vasprintf(&head, fmt, ap) < 0)
		head = NULL;
	va_end(ap);
	code = normalize_code(code);
	int ret = vg_error_set(err, code, "%s: %s", head ? head : "error", strerror(code));
	free(head);
	return ret;
}

int vg_error_prefix(struct vg_error **err, const char *fmt, ...)
{
	if (err == NULL || *err == NULL)
		return -EIO;
	struct vg_error *e = *err;
	char *head = NULL;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&head, fmt, ap);
	va_end(ap);
	if (n >= 0) {
		char *joined = NULL;
		if (asprintf(&joined, "%s: %s", head, e->msg ? e->msg : "unknown error") >= 0) {
			free(e->msg);
			e->msg = joined;
		}
		free(head);
	}
	return -e->code;
}

void vg_error_free(struct vg_error *err)
{
	if (err == NULL)
		return;
	free(err->msg);
	free(err);
}

void vg_error_keep_first(struct vg_error **dst, struct vg_error *src)
{
	if (src == NULL)
		return;
	if (dst != NULL && *dst == NULL) {
		*dst = src;
		return;
	}
	vg_error_free(src);
}

int vg_error_code(const struct vg_error *err)
{
	return err ? err->code : 0;
}

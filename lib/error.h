/* The one error contract: fallible functions return <0 and fill *err. */
#pragma once

#include <stdarg.h>

struct vg_error {
	int code; /* an errno value; 0 is never stored */
	char *msg;
};

/* Fills *err (when err is not NULL and *err is empty) and returns -code. */
int vg_error_set(struct vg_error **err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int vg_error_setv(struct vg_error **err, int code, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));
/* Like vg_error_set, with ": strerror(code)" appended. */
int vg_error_set_errno(struct vg_error **err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Adds "context: " in front of an existing message; returns -code. */
int vg_error_prefix(struct vg_error **err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void vg_error_free(struct vg_error *err);
/* Moves src into *dst when *dst is empty (keeps the first error), else frees src. */
void vg_error_keep_first(struct vg_error **dst, struct vg_error *src);
int vg_error_code(const struct vg_error *err);

static inline void vg_error_freep(struct vg_error **err)
{
	vg_error_free(*err);
}
#define cleanup_error __attribute__((cleanup(vg_error_freep)))

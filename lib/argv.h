/* An owned, NULL-terminated argv built one argument at a time, for execv and for logs. */
#pragma once

#include <stddef.h>

struct vg_error;

struct vg_argv {
	char **argv; /* NULL-terminated, owned strings */
	size_t argc;
	size_t cap;
};

/* Frees the strings and the array, and leaves an empty argv; accepts NULL. */
void vg_argv_free(struct vg_argv *argv);
static inline void vg_argv_freep(struct vg_argv *argv)
{
	vg_argv_free(argv);
}
#define cleanup_argv __attribute__((cleanup(vg_argv_freep)))

/* Appends a copy of arg. */
int vg_argv_add(struct vg_argv *argv, const char *arg, struct vg_error **err);
/* Appends arg and owns it from now on, freed on failure too; a NULL arg is ENOMEM. */
int vg_argv_take(struct vg_argv *argv, char *arg, struct vg_error **err);

/* One line, for logs and golden files: arguments a shell would split are single-quoted.
 * Returns NULL when out of memory. */
char *vg_argv_join(const struct vg_argv *argv);

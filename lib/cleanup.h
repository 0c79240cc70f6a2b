/* Scope guards: every resource is released on every path, ownership moves with TAKE_*. */
#pragma once

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static inline void vg_freep(void *p)
{
	free(*(void **)p);
}

static inline void vg_closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}

static inline void vg_fclosep(FILE **f)
{
	if (*f != NULL)
		fclose(*f);
}

static inline void vg_closedirp(DIR **d)
{
	if (*d != NULL)
		closedir(*d);
}

#define cleanup_free __attribute__((cleanup(vg_freep)))
#define cleanup_close __attribute__((cleanup(vg_closep)))
#define cleanup_fclose __attribute__((cleanup(vg_fclosep)))
#define cleanup_dir __attribute__((cleanup(vg_closedirp)))

#define TAKE_PTR(p)                                                                                \
	({                                                                                         \
		__typeof__(p) taken_ = (p);                                                        \
		(p) = NULL;                                                                        \
		taken_;                                                                            \
	})

#define TAKE_FD(fd)                                                                                \
	({                                                                                         \
		int taken_fd_ = (fd);                                                              \
		(fd) = -1;                                                                         \
		taken_fd_;                                                                         \
	})

#define VG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

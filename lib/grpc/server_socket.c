/*
 * Guarding a unix socket path before grpc binds it. grpc unlinks whatever socket is at the
 * path, even a live one of another instance, and removes it again at teardown: without the
 * lock a second agent would silently steal the endpoint. The directory check keeps another
 * user from swapping the socket under kubelet.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/grpc/server-priv.h"

int socket_dir_check(const char *socket_path, struct vg_error **err)
{
	cleanup_free char *copy = strdup(socket_path);
	if (copy == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	const char *dir = dirname(copy);
	struct stat st;
	if (stat(dir, &st) < 0)
		return vg_error_set_errno(err, errno, "socket directory %s", dir);
	if (!S_ISDIR(st.st_mode))
		return vg_error_set(err, ENOTDIR, "socket directory %s is not a directory", dir);
	uid_t euid = geteuid();
	if (st.st_uid != 0 && st.st_uid != euid)
		return vg_error_set(err, EPERM,
				    "socket directory %s is owned by uid %u, not by root or by us "
				    "(uid %u)",
				    dir, (unsigned)st.st_uid, (unsigned)euid);
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return vg_error_set(err, EPERM,
				    "socket directory %s is writable by group or others (mode %04o): "
				    "another user could replace the socket; use a 0755 or 0700 "
				    "directory",
				    dir, (unsigned)(st.st_mode & 07777));
	return 0;
}

/* The pid the holder wrote, for the error message; "unknown" when unreadable. */
static void read_holder_pid(int fd, char *buf, size_t size)
{
	ssize_t n = pread(fd, buf, size - 1, 0);
	if (n <= 0) {
		snprintf(buf, size, "unknown");
		return;
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	if (buf[0] == '\0')
		snprintf(buf, size, "unknown");
}

int socket_lock(const char *socket_path, const char *lock_at, char **lock_path,
		struct vg_error **err)
{
	cleanup_free char *path = NULL;
	if ((lock_at != NULL ? (path = strdup(lock_at)) == NULL
			     : asprintf(&path, "%s.lock", socket_path) < 0))
		return vg_error_set(err, ENOMEM, "out of memory");
	/* A holder that just shut down unlinks the file after we opened it: then the lock we get
	 * is on a dead inode, so check and retry against what the path names now. */
	for (int attempt = 0; attempt < 8; attempt++) {
		cleanup_close int fd =
			open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0644);
		if (fd < 0)
			return vg_error_set_errno(err, errno, "cannot open lock file %s", path);
		if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
			if (errno != EWOULDBLOCK)
				return vg_error_set_errno(err, errno, "cannot lock %s", path);
			char holder[32];
			read_holder_pid(fd, holder, sizeof(holder));
			return vg_error_set(err, EADDRINUSE,
					    "socket %s is in use: its lock %s is held by pid %s",
					    socket_path, path, holder);
		}
		struct stat held, named;
		if (fstat(fd, &held) < 0)
			return vg_error_set_errno(err, errno, "cannot stat %s", path);
		if (stat(path, &named) < 0 || held.st_dev != named.st_dev ||
		    held.st_ino != named.st_ino)
			continue;
		char pid[32];
		int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
		if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)len, 0) != len)
			return vg_error_set_errno(err, errno, "cannot write our pid into %s", path);
		*lock_path = TAKE_PTR(path);
		return TAKE_FD(fd);
	}
	return vg_error_set(err, EAGAIN, "lock file %s keeps being replaced", path);
}

void socket_unlock(int fd, const char *lock_path)
{
	/* Unlinked while still locked, so nobody locks a file that is about to vanish. */
	if (lock_path != NULL)
		unlink(lock_path);
	if (fd >= 0)
		close(fd);
}

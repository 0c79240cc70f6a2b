/* Processes identified without PID-reuse races: pid plus its start time, pidfds for signals. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct vg_error;

/* Field 22 of /proc/<pid>/stat, in clock ticks since boot. */
int vg_proc_start_time(pid_t pid, uint64_t *out, struct vg_error **err);
/* A pidfd for pid, but only if it is still the process that started at start_time. */
int vg_pidfd_open_checked(pid_t pid, uint64_t start_time, struct vg_error **err);
int vg_pidfd_signal(int pidfd, int sig, struct vg_error **err);
bool vg_process_alive(pid_t pid, uint64_t start_time);

int64_t vg_now_ns(void); /* CLOCK_REALTIME */
int64_t vg_monotonic_ns(void);
/* RFC 3339 UTC with milliseconds: 2026-11-22T05:07:47.123Z */
void vg_format_time(int64_t realtime_ns, char out[32]);

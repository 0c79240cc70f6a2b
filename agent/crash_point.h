/* Fault injection for the crash tests: the agent kills itself with SIGKILL at a named step when
 * VMGPU_TEST_CRASH_AT names it, so a test can prove recovery between every pair of steps.
 * Without that variable (every real deployment) this is a getenv and a compare. */
#pragma once

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static inline void vg_crash_point(const char *step)
{
	const char *at = getenv("VMGPU_TEST_CRASH_AT");
	if (at != NULL && strcmp(at, step) == 0)
		raise(SIGKILL);
}

#include "lib/argv.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/error.h"

void vg_argv_free(struct vg_argv *argv)
{
	if (argv == NULL)
		return;
	for (size_t i = 0; i < argv->argc; i++)
		free(argv->argv[i]);
	free(argv->argv);
	*argv = (struct vg_argv){ 0 };
}

int vg_argv_take(struct vg_argv *argv, char *arg, struct vg_error **err)
{
	cleanup_free char *owned = arg;
	if (owned == NULL)
		return vg_error_set(err, ENOMEM, "out of memory building a command line");
	if (argv->argc + 2 > argv->cap) {
		size_t cap = argv->cap ? argv->cap * 2 : 64;
		char **grown = reallocarray(argv->argv, cap, sizeof(*grown));
		if (grown == NULL)
			return vg_error_set(err, ENOMEM, "out of memory building a command line");
		argv->argv = grown;
		argv->cap = cap;
	}
	argv->argv[argv->argc++] = TAKE_PTR(owned);
	argv->argv[argv->argc] = NULL;
	return 0;
}

int vg_argv_add(struct vg_argv *argv, const char *arg, struct vg_error **err)
{
	return vg_argv_take(argv, strdup(arg), err);
}

static bool needs_quotes(const char *arg)
{
	return *arg == '\0' || arg[strspn(arg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:=,@%+-")] != '\0';
}

char *vg_argv_join(const struct vg_argv *argv)
{
	char *line = NULL;
	size_t len = 0;
	cleanup_fclose FILE *stream = open_memstream(&line, &len);
	if (stream == NULL)
		return NULL;
	for (size_t i = 0; i < argv->argc; i++) {
		const char *arg = argv->argv[i];
		if (i > 0)
			fputc(' ', stream);
		if (!needs_quotes(arg)) {
			fputs(arg, stream);
			continue;
		}
		fputc('\'', stream);
		for (const char *p = arg; *p != '\0'; p++) {
			if (*p == '\'')
				fputs("'\\''", stream);
			else
				fputc(*p, stream);
		}
		fputc('\'', stream);
	}
	bool failed = ferror(stream) != 0;
	if (fclose(TAKE_PTR(stream)) != 0 || failed) {
		free(line);
		return NULL;
	}
	return line;
}

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/error.h"
#include "lib/spawn.h"
#include "shim/nat.h"

void vg_nat_table_name(const char *sandbox_id, char *out, size_t size)
{
	snprintf(out, size, "vmgpu-%s", sandbox_id);
}

/* nft reads the ruleset from a file; a pipe through /dev/stdin keeps it off the disk. */
static int run_nft_script(const char *script, struct vg_error **err)
{
	char path[] = "/tmp/vmgpu-nft-XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "create nft script");
	size_t len = strlen(script);
	bool written = write(fd, script, len) == (ssize_t)len;
	close(fd);
	if (!written) {
		unlink(path);
		return vg_error_set(err, EIO, "write nft script");
	}
	char output[512];
	char *argv[] = { (char *)"nft", (char *)"-f", path, NULL };
	int status = vg_spawn_capture(argv, 10000, output, sizeof(output), err);
	unlink(path);
	if (status < 0)
		return status;
	if (status != 0)
		return vg_error_set(err, EIO, "nft failed (%d): %s", status, output);
	return 0;
}

int vg_nat_add(const char *sandbox_id, uint32_t guest_addr, const char *tap_name,
	       struct vg_error **err)
{
	char table[96], guest[INET_ADDRSTRLEN], script[1024];
	vg_nat_table_name(sandbox_id, table, sizeof(table));
	struct in_addr in = { .s_addr = htonl(guest_addr) };
	inet_ntop(AF_INET, &in, guest, sizeof(guest));
	snprintf(script, sizeof(script),
		 "table ip %s {\n"
		 "  chain postrouting {\n"
		 "    type nat hook postrouting priority srcnat; policy accept;\n"
		 "    ip saddr %s oifname != \"%s\" masquerade\n"
		 "  }\n"
		 "  chain forward {\n"
		 "    type filter hook forward priority filter; policy accept;\n"
		 "    iifname \"%s\" accept\n"
		 "    oifname \"%s\" ct state established,related accept\n"
		 "  }\n"
		 "}\n",
		 table, guest, tap_name, tap_name, tap_name);
	int ret = run_nft_script(script, err);
	if (ret < 0)
		return vg_error_prefix(err, "add NAT table %s", table);
	return 0;
}

int vg_nat_remove(const char *sandbox_id, struct vg_error **err)
{
	char table[96], output[512];
	vg_nat_table_name(sandbox_id, table, sizeof(table));
	char *list_argv[] = { (char *)"nft", (char *)"list", (char *)"table", (char *)"ip", table,
			      NULL };
	if (vg_spawn_capture(list_argv, 10000, output, sizeof(output), NULL) != 0)
		return 0; /* already gone */
	char *argv[] = { (char *)"nft", (char *)"delete", (char *)"table", (char *)"ip", table,
			 NULL };
	int status = vg_spawn_capture(argv, 10000, output, sizeof(output), err);
	if (status < 0)
		return vg_error_prefix(err, "delete NAT table %s", table);
	if (status != 0)
		return vg_error_set(err, EIO, "delete NAT table %s: %s", table, output);
	return 0;
}

/* vmgpu guest init: PID 1 of the test and sandbox guest.
 *
 * Mounts /proc, /sys and /dev, loads the guest's modules with finit_module, brings up lo and
 * eth0 from vmgpu.ip=, pings the gateway, lists the PCI functions, opens the virtio-serial port
 * io.vmgpu.ready, starts listening for the power button, then writes exactly one line
 *   VMGPU-READY id=<id> pci=<vvvv:dddd,...> net=<ok|fail|none>
 * and waits for KEY_POWER (or the line VMGPU-POWEROFF on the port) to power off.
 * Any fatal error writes VMGPU-FAILED id=<id> reason=<text> and powers off.
 *
 * Kernel command line: vmgpu.id=<id> [vmgpu.ip=<ip>/<prefix>,<gateway>] [vmgpu.modules=a,b]
 * [vmgpu.gpus=vvvv:dddd,...]. See README.md next to this file.
 *
 * Every wait is bounded except the final wait for the power-off request. Built static against
 * glibc; nothing here needs NSS, locales or dlopen.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/input.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define READY_PORT_NAME "io.vmgpu.ready"
#define ID_MAX 64
#define MAX_PCI 512
#define MAX_BUTTONS 8
#define MAX_MODULES 32

/* Bounds of every wait, in milliseconds. */
#define PORT_WAIT_MS 10000     /* virtio-serial port announced by the host */
#define PORT_WRITE_MS 30000    /* host side of the ready port connected and writable */
#define NETDEV_WAIT_MS 5000    /* eth0 appears after virtio_net is loaded */
#define PING_WAIT_MS 5000      /* gateway answers */
#define PING_INTERVAL_MS 250
#define BUTTON_WAIT_MS 5000    /* an input device with KEY_POWER appears */
#define SCAN_INTERVAL_MS 20

/* Modules loaded before vmgpu.modules=, in this order. Keep in step with the module list in
 * hack/build-test-guest.sh, which copies them (and their dependencies) into the initramfs. */
#if defined(__x86_64__)
static const char *const builtin_modules[] = {"virtio_pci", "virtio_net", "virtio_console",
					      "evdev", "button"};
#elif defined(__aarch64__)
static const char *const builtin_modules[] = {"virtio_pci", "virtio_net", "virtio_console",
					      "evdev", "gpio_keys"};
#else
#error "vmgpu guest init: unsupported architecture"
#endif

static char g_id[ID_MAX + 1] = "unknown";
static int g_port = -1;   /* the ready port, once open */
static char g_kver[65];
static char *g_modules_dep;  /* contents of modules.dep, NUL-separated into lines */
static size_t g_modules_dep_len;
static char *g_modules_builtin;
static size_t g_modules_builtin_len;

struct config {
	bool have_ip;
	struct in_addr addr;
	struct in_addr gateway;
	int prefix;
	char modules[512];
	char gpus[512];
};

/* ---- time and console -------------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
	}
}

static void write_all_fd(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[1024];
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	int n = snprintf(line, sizeof(line), "vmgpu-init[%4ld.%03ld]: ", (long)ts.tv_sec,
			 ts.tv_nsec / 1000000);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	write_all_fd(STDOUT_FILENO, line, len);
}

static _Noreturn void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	/* Still here: let PID 1 exit, the kernel panics, and panic=-1 (with -no-reboot) ends QEMU. */
	say("reboot(RB_POWER_OFF) failed: %s", strerror(errno));
	_exit(1);
}

/* Writes a whole line to the ready port, waiting (bounded) until the host side can take it. */
static bool port_write_line(const char *line, int timeout_ms)
{
	if (g_port < 0)
		return false;
	size_t len = strlen(line), off = 0;
	int64_t deadline = now_ms() + timeout_ms;
	while (off < len) {
		ssize_t n = write(g_port, line + off, len - off);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return false;
		int64_t left = deadline - now_ms();
		if (left <= 0)
			return false;
		struct pollfd p = {.fd = g_port, .events = POLLOUT};
		/* POLLHUP means no host is connected yet: poll returns at once, so back off. */
		if (poll(&p, 1, (int)(left < 100 ? left : 100)) > 0 && (p.revents & POLLHUP))
			sleep_ms(50);
	}
	return true;
}

static _Noreturn void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void fail(const char *fmt, ...)
{
	char reason[512], line[700];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	for (char *c = reason; *c; c++)
		if (*c == '\n' || *c == '\r')
			*c = ' ';
	snprintf(line, sizeof(line), "VMGPU-FAILED id=%s reason=%s\n", g_id, reason);
	write_all_fd(STDOUT_FILENO, line, strlen(line));
	if (g_port >= 0 && !port_write_line(line, 2000))
		say("could not write the failure to the ready port");
	power_off();
}

/* ---- small file helpers -------------------------------------------------------------------- */

/* Reads a whole (small or procfs/sysfs) file into a malloc'd NUL-terminated buffer. */
static char *read_file(const char *path, size_t *len_out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	while (buf) {
		if (len + 1 >= cap) {
			char *bigger = realloc(buf, cap * 2);
			if (!bigger) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = bigger;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (!buf)
		return NULL;
	buf[len] = '\0';
	if (len_out)
		*len_out = len;
	return buf;
}

/* Reads the first line of a small file into buf, without the newline. */
static bool read_line(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return false;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return true;
}

/* ---- mounts and the command line ----------------------------------------------------------- */

static void mount_one(const char *type, const char *dir)
{
	mkdir(dir, 0755);
	if (mount(type, dir, type, MS_NOSUID | MS_NOEXEC, NULL) < 0 && errno != EBUSY)
		fail("mount %s on %s: %s", type, dir, strerror(errno));
}

static void setup_mounts(void)
{
	mount_one("proc", "/proc");
	mount_one("sysfs", "/sys");
	mkdir("/dev", 0755);
	if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY)
		fail("mount devtmpfs on /dev: %s", strerror(errno));
	/* Without /dev/console in the initramfs the kernel leaves fds 0-2 closed. */
	if (fcntl(STDOUT_FILENO, F_GETFD) < 0) {
		int fd = open("/dev/console", O_RDWR | O_NOCTTY);
		if (fd >= 0) {
			dup2(fd, STDIN_FILENO);
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			if (fd > STDERR_FILENO)
				close(fd);
		}
	}
}

static bool id_is_valid(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > ID_MAX || !(islower((unsigned char)id[0]) || isdigit((unsigned char)id[0])))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(islower((unsigned char)id[i]) || isdigit((unsigned char)id[i]) || id[i] == '-'))
			return false;
	return true;
}

/* vmgpu.ip=<ip>/<prefix>,<gateway> */
static bool parse_ip(const char *value, struct config *cfg)
{
	char buf[64];
	if (strlen(value) >= sizeof(buf))
		return false;
	strcpy(buf, value);
	char *slash = strchr(buf, '/'), *comma = strchr(buf, ',');
	if (!slash || !comma || comma < slash)
		return false;
	*slash = '\0';
	*comma = '\0';
	char *end;
	errno = 0;
	long prefix = strtol(slash + 1, &end, 10);
	if (errno || end == slash + 1 || *end || prefix < 1 || prefix > 32)
		return false;
	if (inet_pton(AF_INET, buf, &cfg->addr) != 1 ||
	    inet_pton(AF_INET, comma + 1, &cfg->gateway) != 1)
		return false;
	cfg->prefix = (int)prefix;
	cfg->have_ip = true;
	return true;
}

static void copy_value(char *dst, size_t size, const char *value, const char *key)
{
	if (strlen(value) >= size)
		fail("%s is too long (%zu bytes, at most %zu)", key, strlen(value), size - 1);
	strcpy(dst, value);
}

static void parse_cmdline(struct config *cfg)
{
	char *cmdline = read_file("/proc/cmdline", NULL);
	if (!cmdline)
		fail("cannot read /proc/cmdline: %s", strerror(errno));
	bool have_id = false;
	char *save = NULL;
	for (char *tok = strtok_r(cmdline, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
		if (strncmp(tok, "vmgpu.id=", 9) == 0) {
			const char *v = tok + 9;
			if (!id_is_valid(v)) {
				snprintf(g_id, sizeof(g_id), "invalid");
				fail("vmgpu.id must match [a-z0-9][a-z0-9-]* and have at most %d characters",
				     ID_MAX);
			}
			strcpy(g_id, v);
			have_id = true;
		} else if (strncmp(tok, "vmgpu.ip=", 9) == 0) {
			if (!parse_ip(tok + 9, cfg))
				fail("vmgpu.ip=%.64s: want <ipv4>/<prefix>,<gateway ipv4>", tok + 9);
		} else if (strncmp(tok, "vmgpu.modules=", 14) == 0) {
			copy_value(cfg->modules, sizeof(cfg->modules), tok + 14, "vmgpu.modules");
		} else if (strncmp(tok, "vmgpu.gpus=", 11) == 0) {
			copy_value(cfg->gpus, sizeof(cfg->gpus), tok + 11, "vmgpu.gpus");
		}
	}
	free(cmdline);
	if (!have_id)
		fail("no vmgpu.id= on the kernel command line");
}

/* ---- modules --------------------------------------------------------------------------------- */

static void normalize_module_name(char *name)
{
	for (char *c = name; *c; c++)
		if (*c == '-')
			*c = '_';
}

/* The module name of a modules.dep path: "kernel/drivers/net/virtio_net.ko" -> "virtio_net". */
static void module_name_of(const char *path, size_t len, char *out, size_t size)
{
	const char *base = path;
	for (size_t i = 0; i < len; i++)
		if (path[i] == '/')
			base = path + i + 1;
	size_t n = (size_t)(path + len - base);
	const char *dot = memchr(base, '.', n);
	if (dot)
		n = (size_t)(dot - base);
	if (n >= size)
		n = size - 1;
	memcpy(out, base, n);
	out[n] = '\0';
	normalize_module_name(out);
}

static void load_module_tables(void)
{
	struct utsname u;
	if (uname(&u) < 0)
		fail("uname: %s", strerror(errno));
	snprintf(g_kver, sizeof(g_kver), "%s", u.release);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "/lib/modules/%s/modules.dep", g_kver);
	g_modules_dep = read_file(path, &g_modules_dep_len);
	if (!g_modules_dep)
		fail("cannot read %s: %s (the initramfs does not match kernel %s)", path,
		     strerror(errno), g_kver);
	snprintf(path, sizeof(path), "/lib/modules/%s/modules.builtin", g_kver);
	g_modules_builtin = read_file(path, &g_modules_builtin_len);
}

/* Finds the module's line in a table of "path[: deps]" lines; returns its start or NULL. */
static const char *find_module_line(const char *table, size_t table_len, const char *name)
{
	if (!table)
		return NULL;
	const char *line = table, *end = table + table_len;
	while (line < end) {
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		if (!eol)
			eol = end;
		const char *colon = memchr(line, ':', (size_t)(eol - line));
		char this_name[64];
		module_name_of(line, (size_t)((colon ? colon : eol) - line), this_name,
			       sizeof(this_name));
		if (strcmp(this_name, name) == 0)
			return line;
		line = eol + 1;
	}
	return NULL;
}

static int insert_module_file(const char *relpath, size_t len)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "/lib/modules/%s/%.*s", g_kver, (int)len, relpath);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = (int)syscall(SYS_finit_module, fd, "", 0);
	int saved = errno;
	close(fd);
	if (rc < 0 && saved != EEXIST)
		return -saved;
	return 0;
}

/* Loads a module and its dependencies (modules.dep lists them so that the last loads first).
 * Returns 0, or a negative errno: -ENOENT when the module is neither built in nor present. */
static int load_module(const char *requested, const char **how)
{
	char name[64];
	snprintf(name, sizeof(name), "%s", requested);
	normalize_module_name(name);
	*how = "loaded";
	const char *line = find_module_line(g_modules_dep, g_modules_dep_len, name);
	if (!line) {
		if (find_module_line(g_modules_builtin, g_modules_builtin_len, name)) {
			*how = "built in";
			return 0;
		}
		return -ENOENT;
	}
	const char *eol = strchr(line, '\n');
	if (!eol)
		eol = line + strlen(line);
	const char *colon = memchr(line, ':', (size_t)(eol - line));
	if (!colon)
		return -EINVAL;
	/* Dependencies, right to left. */
	const char *deps[MAX_MODULES];
	size_t dep_len[MAX_MODULES], n = 0;
	for (const char *p = colon + 1; p < eol && n < MAX_MODULES;) {
		while (p < eol && *p == ' ')
			p++;
		const char *q = p;
		while (q < eol && *q != ' ')
			q++;
		if (q > p) {
			deps[n] = p;
			dep_len[n++] = (size_t)(q - p);
		}
		p = q;
	}
	for (size_t i = n; i-- > 0;) {
		int rc = insert_module_file(deps[i], dep_len[i]);
		if (rc < 0) {
			say("module %s: dependency %.*s: %s", name, (int)dep_len[i], deps[i],
			    strerror(-rc));
			return rc;
		}
	}
	return insert_module_file(line, (size_t)(colon - line));
}

static void load_modules(const struct config *cfg)
{
	load_module_tables();
	for (size_t i = 0; i < sizeof(builtin_modules) / sizeof(builtin_modules[0]); i++) {
		const char *how;
		int rc = load_module(builtin_modules[i], &how);
		if (rc < 0)
			fail("module %s: %s", builtin_modules[i], strerror(-rc));
		say("module %s %s", builtin_modules[i], how);
	}
	if (!cfg->modules[0])
		return;
	char list[sizeof(cfg->modules)];
	strcpy(list, cfg->modules);
	char *save = NULL;
	for (char *m = strtok_r(list, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
		const char *how;
		int rc = load_module(m, &how);
		if (rc == -ENOENT)
			say("module %s: not in this initramfs and not built in (vmgpu.modules)", m);
		else if (rc < 0)
			say("module %s: %s (vmgpu.modules)", m, strerror(-rc));
		else
			say("module %s %s", m, how);
	}
}

/* ---- the ready port -------------------------------------------------------------------------- */

/* Finds /sys/class/virtio-ports/<vportNpM>/name == io.vmgpu.ready and opens /dev/<vportNpM>. */
static int try_open_ready_port(void)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -1;
	int fd = -1;
	struct dirent *e;
	while (fd < 0 && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[PATH_MAX], name[128];
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		if (!read_line(path, name, sizeof(name)) || strcmp(name, READY_PORT_NAME) != 0)
			continue;
		snprintf(path, sizeof(path), "/dev/%s", e->d_name);
		fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		if (fd >= 0)
			say("ready port %s is %s", READY_PORT_NAME, path);
	}
	closedir(d);
	return fd;
}

static void open_ready_port(void)
{
	int64_t deadline = now_ms() + PORT_WAIT_MS;
	while ((g_port = try_open_ready_port()) < 0) {
		if (now_ms() >= deadline)
			fail("no virtio-serial port named %s within %d ms", READY_PORT_NAME,
			     PORT_WAIT_MS);
		sleep_ms(SCAN_INTERVAL_MS);
	}
}

/* ---- network ---------------------------------------------------------------------------------- */

static bool set_flags_up(int sock, const char *ifname)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
		return false;
	ifr.ifr_flags |= IFF_UP;
	return ioctl(sock, SIOCSIFFLAGS, &ifr) == 0;
}

static bool set_inet(int sock, const char *ifname, unsigned long req, struct in_addr a)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr = a};
	memcpy(&ifr.ifr_addr, &sin, sizeof(sin));
	return ioctl(sock, req, &ifr) == 0;
}

/* eth0, or else the first interface that is not lo, once it exists (bounded wait). */
static bool find_netdev(char *ifname, size_t size)
{
	int64_t deadline = now_ms() + NETDEV_WAIT_MS;
	for (;;) {
		if (access("/sys/class/net/eth0", F_OK) == 0) {
			snprintf(ifname, size, "eth0");
			return true;
		}
		DIR *d = opendir("/sys/class/net");
		struct dirent *e;
		bool found = false;
		while (d && !found && (e = readdir(d))) {
			size_t len = strlen(e->d_name);
			if (e->d_name[0] != '.' && strcmp(e->d_name, "lo") != 0 && len < size) {
				memcpy(ifname, e->d_name, len + 1);
				found = true;
			}
		}
		if (d)
			closedir(d);
		if (found)
			return true;
		if (now_ms() >= deadline)
			return false;
		sleep_ms(SCAN_INTERVAL_MS);
	}
}

static uint16_t inet_checksum(const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t sum = 0;
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((uint16_t)~sum);
}

/* Sends ICMP echo requests to the gateway until one is answered or the deadline passes. */
static bool ping_gateway(struct in_addr gw)
{
	int s = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
	if (s < 0) {
		say("ping: socket: %s", strerror(errno));
		return false;
	}
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = gw};
	const uint16_t ident = 0x7667; /* "vg" */
	int64_t start = now_ms(), deadline = start + PING_WAIT_MS;
	bool ok = false;
	for (uint16_t seq = 1; !ok && now_ms() < deadline; seq++) {
		struct icmphdr req;
		memset(&req, 0, sizeof(req));
		req.type = ICMP_ECHO;
		req.un.echo.id = htons(ident);
		req.un.echo.sequence = htons(seq);
		req.checksum = inet_checksum(&req, sizeof(req));
		if (sendto(s, &req, sizeof(req), 0, (struct sockaddr *)&to, sizeof(to)) < 0)
			say("ping: sendto: %s", strerror(errno));
		int64_t next = now_ms() + PING_INTERVAL_MS;
		if (next > deadline)
			next = deadline;
		for (int64_t left; !ok && (left = next - now_ms()) > 0;) {
			struct pollfd p = {.fd = s, .events = POLLIN};
			if (poll(&p, 1, (int)left) <= 0)
				continue;
			uint8_t buf[256];
			struct sockaddr_in from;
			socklen_t flen = sizeof(from);
			ssize_t n = recvfrom(s, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
			if (n < (ssize_t)sizeof(struct iphdr))
				continue;
			size_t ihl = (size_t)(buf[0] & 0x0f) * 4;
			if ((size_t)n < ihl + sizeof(struct icmphdr))
				continue;
			struct icmphdr rep;
			memcpy(&rep, buf + ihl, sizeof(rep));
			if (from.sin_addr.s_addr == gw.s_addr && rep.type == ICMP_ECHOREPLY &&
			    ntohs(rep.un.echo.id) == ident)
				ok = true;
		}
	}
	close(s);
	say("ping %s: %s after %lld ms", inet_ntoa(gw), ok ? "answered" : "no answer",
	    (long long)(now_ms() - start));
	return ok;
}

/* Returns "ok", "fail" or "none". */
static const char *setup_network(const struct config *cfg)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		fail("socket(AF_INET): %s", strerror(errno));
	if (!set_flags_up(sock, "lo"))
		say("lo: cannot bring up: %s", strerror(errno));
	if (!cfg->have_ip) {
		close(sock);
		say("no vmgpu.ip=: network not configured");
		return "none";
	}
	char ifname[IFNAMSIZ];
	if (!find_netdev(ifname, sizeof(ifname))) {
		close(sock);
		say("no network interface within %d ms", NETDEV_WAIT_MS);
		return "fail";
	}
	struct in_addr mask = {.s_addr = htonl(cfg->prefix == 32 ? 0xffffffffu
							       : ~(0xffffffffu >> cfg->prefix))};
	if (!set_inet(sock, ifname, SIOCSIFADDR, cfg->addr) ||
	    !set_inet(sock, ifname, SIOCSIFNETMASK, mask) || !set_flags_up(sock, ifname)) {
		say("%s: cannot configure: %s", ifname, strerror(errno));
		close(sock);
		return "fail";
	}
	struct rtentry rt;
	memset(&rt, 0, sizeof(rt));
	struct sockaddr_in any = {.sin_family = AF_INET};
	struct sockaddr_in gw = {.sin_family = AF_INET, .sin_addr = cfg->gateway};
	memcpy(&rt.rt_dst, &any, sizeof(any));
	memcpy(&rt.rt_genmask, &any, sizeof(any));
	memcpy(&rt.rt_gateway, &gw, sizeof(gw));
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	if (ioctl(sock, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
		say("default route via %s: %s", inet_ntoa(cfg->gateway), strerror(errno));
		close(sock);
		return "fail";
	}
	close(sock);
	char addr[INET_ADDRSTRLEN];
	inet_ntop(AF_INET, &cfg->addr, addr, sizeof(addr));
	say("%s: %s/%d, default via %s", ifname, addr, cfg->prefix, inet_ntoa(cfg->gateway));
	return ping_gateway(cfg->gateway) ? "ok" : "fail";
}

/* ---- PCI ---------------------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

/* "0x1af4\n" -> "1af4" */
static bool read_pci_id(const char *dev, const char *attr, char out[5])
{
	char path[PATH_MAX], buf[32];
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s", dev, attr);
	if (!read_line(path, buf, sizeof(buf)))
		return false;
	const char *hex = strncmp(buf, "0x", 2) == 0 ? buf + 2 : buf;
	if (strlen(hex) != 4)
		return false;
	for (int i = 0; i < 4; i++) {
		if (!isxdigit((unsigned char)hex[i]))
			return false;
		out[i] = (char)tolower((unsigned char)hex[i]);
	}
	out[4] = '\0';
	return true;
}

/* One "vvvv:dddd" per PCI function, sorted, comma-separated. */
static void list_pci(char *out, size_t size, const struct config *cfg)
{
	static char ids[MAX_PCI][10];
	size_t n = 0;
	out[0] = '\0';
	DIR *d = opendir("/sys/bus/pci/devices");
	if (!d) {
		say("no /sys/bus/pci/devices: %s", strerror(errno));
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)) && n < MAX_PCI) {
		char v[5], dv[5];
		if (e->d_name[0] == '.')
			continue;
		if (!read_pci_id(e->d_name, "vendor", v) || !read_pci_id(e->d_name, "device", dv)) {
			say("pci %s: unreadable vendor/device", e->d_name);
			continue;
		}
		snprintf(ids[n++], sizeof(ids[0]), "%s:%s", v, dv);
	}
	closedir(d);
	qsort(ids, n, sizeof(ids[0]), cmp_str);
	size_t len = 0;
	for (size_t i = 0; i < n && len + 11 < size; i++)
		len += (size_t)snprintf(out + len, size - len, "%s%s", i ? "," : "", ids[i]);
	if (!cfg->gpus[0])
		return;
	char want[sizeof(cfg->gpus)];
	strcpy(want, cfg->gpus);
	char *save = NULL;
	for (char *g = strtok_r(want, ",", &save); g; g = strtok_r(NULL, ",", &save)) {
		size_t seen = 0;
		for (size_t i = 0; i < n; i++)
			seen += strcasecmp(ids[i], g) == 0;
		say("gpu %s: %s (%zu function%s)", g, seen ? "seen" : "NOT seen", seen,
		    seen == 1 ? "" : "s");
	}
}

/* ---- power button ----------------------------------------------------------------------------- */

static bool has_key_power(int fd)
{
	unsigned long bits[KEY_MAX / (8 * sizeof(unsigned long)) + 1];
	memset(bits, 0, sizeof(bits));
	if (ioctl(fd, EVIOCGBIT(EV_KEY, sizeof(bits)), bits) < 0)
		return false;
	const size_t per = 8 * sizeof(unsigned long);
	return (bits[KEY_POWER / per] >> (KEY_POWER % per)) & 1;
}

/* Opens every /dev/input/event* that can send KEY_POWER; waits (bounded) for at least one. */
static size_t open_power_buttons(int fds[MAX_BUTTONS])
{
	int64_t deadline = now_ms() + BUTTON_WAIT_MS;
	for (;;) {
		size_t n = 0;
		DIR *d = opendir("/dev/input");
		struct dirent *e;
		while (d && n < MAX_BUTTONS && (e = readdir(d))) {
			if (strncmp(e->d_name, "event", 5) != 0)
				continue;
			char path[PATH_MAX], name[128] = "";
			snprintf(path, sizeof(path), "/dev/input/%s", e->d_name);
			int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
			if (fd < 0)
				continue;
			if (!has_key_power(fd)) {
				close(fd);
				continue;
			}
			ioctl(fd, EVIOCGNAME(sizeof(name) - 1), name);
			say("power button: %s (%s)", path, name);
			fds[n++] = fd;
		}
		if (d)
			closedir(d);
		if (n > 0 || now_ms() >= deadline)
			return n;
		sleep_ms(SCAN_INTERVAL_MS);
	}
}

/* Waits for KEY_POWER on any button, or a VMGPU-POWEROFF line on the port. The only unbounded
 * wait in this program, by design. */
static _Noreturn void wait_for_power_off(const int buttons[MAX_BUTTONS], size_t n_buttons)
{
	char line[128];
	size_t line_len = 0;
	bool port_hung_up = false;
	for (;;) {
		struct pollfd p[MAX_BUTTONS + 1];
		size_t n = 0;
		for (size_t i = 0; i < n_buttons; i++)
			p[n++] = (struct pollfd){.fd = buttons[i], .events = POLLIN};
		/* While nobody is connected to the port it reports POLLHUP at once: look again
		 * every second instead of spinning. */
		p[n++] = (struct pollfd){.fd = port_hung_up ? -1 : g_port, .events = POLLIN};
		int rc = poll(p, n, port_hung_up ? 1000 : -1);
		port_hung_up = false;
		if (rc < 0 && errno != EINTR)
			fail("poll: %s", strerror(errno));
		if (rc <= 0)
			continue;
		for (size_t i = 0; i < n_buttons; i++) {
			if (!(p[i].revents & POLLIN))
				continue;
			struct input_event ev[16];
			ssize_t got = read(p[i].fd, ev, sizeof(ev));
			for (ssize_t k = 0; k < got / (ssize_t)sizeof(ev[0]); k++) {
				if (ev[k].type == EV_KEY && ev[k].code == KEY_POWER && ev[k].value == 1) {
					say("power button pressed: powering off");
					power_off();
				}
			}
		}
		struct pollfd *pp = &p[n - 1];
		if (pp->revents & POLLIN) {
			char buf[64];
			ssize_t got = read(g_port, buf, sizeof(buf));
			for (ssize_t k = 0; k < got; k++) {
				if (buf[k] != '\n') {
					if (line_len < sizeof(line) - 1)
						line[line_len++] = buf[k];
					continue;
				}
				line[line_len] = '\0';
				if (line_len > 0 && line[line_len - 1] == '\r')
					line[line_len - 1] = '\0';
				line_len = 0;
				if (strcmp(line, "VMGPU-POWEROFF") == 0) {
					say("VMGPU-POWEROFF on the ready port: powering off");
					power_off();
				}
				say("ignoring %.60s on the ready port", line);
			}
			if (got == 0)
				port_hung_up = true;
		} else if (pp->revents & (POLLHUP | POLLERR)) {
			port_hung_up = true;
		}
	}
}

/* ---- main --------------------------------------------------------------------------------------- */

int main(void)
{
	static struct config cfg;
	setup_mounts();
	say("starting");
	parse_cmdline(&cfg);
	load_modules(&cfg);
	open_ready_port();
	const char *net = setup_network(&cfg);
	static char pci[MAX_PCI * 10 + 1];
	list_pci(pci, sizeof(pci), &cfg);
	int buttons[MAX_BUTTONS];
	size_t n_buttons = open_power_buttons(buttons);
	if (n_buttons == 0)
		say("WARNING: no input device sends KEY_POWER within %d ms; only VMGPU-POWEROFF on "
		    "the ready port can power this guest off",
		    BUTTON_WAIT_MS);
	char ready[sizeof(pci) + 128];
	snprintf(ready, sizeof(ready), "VMGPU-READY id=%s pci=%s net=%s\n", g_id, pci, net);
	if (!port_write_line(ready, PORT_WRITE_MS))
		fail("cannot write the ready line to %s within %d ms", READY_PORT_NAME,
		     PORT_WRITE_MS);
	write_all_fd(STDOUT_FILENO, ready, strlen(ready));
	wait_for_power_off(buttons, n_buttons);
}

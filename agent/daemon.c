#include "agent/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/cri_service.h"
#include "agent/device_table.h"
#include "agent/inventory_service.h"
#include "agent/sandboxes.h"
#include "lib/cleanup.h"
#include "lib/config.h"
#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"
#include "lib/log.h"

struct agent {
	const struct vg_config *config;
	struct vg_grpc_loop *loop;
	struct vg_device_table devices;
	struct vg_sandboxes sandboxes;
	struct vg_inventory_service *inventory;
	uint64_t health_timer;
	int signal_fd;
};

static void on_change(void *ctx)
{
	struct agent *agent = ctx;
	vg_device_table_refresh(&agent->devices);
	vg_inventory_service_publish(agent->inventory);
}

static void health_tick(void *ctx)
{
	struct agent *agent = ctx;
	cleanup_error struct vg_error *err = NULL;
	if (vg_device_table_scan(&agent->devices, agent->config, false, &err) < 0)
		vg_warn("GPU rescan failed, keeping the last inventory: %s", err->msg);
	on_change(agent);
	agent->health_timer = vg_grpc_loop_add_timer(
		agent->loop, agent->config->health_interval_s * 1000, health_tick, agent);
}

static void on_signal(void *ctx, int fd)
{
	struct agent *agent = ctx;
	struct signalfd_siginfo info;
	while (read(fd, &info, sizeof(info)) == (ssize_t)sizeof(info)) {
		if (info.ssi_signo == SIGHUP) {
			vg_info("SIGHUP: rescanning GPUs");
			health_tick(agent);
			continue;
		}
		vg_info("signal %u: shutting down; sandboxes keep running", info.ssi_signo);
		vg_grpc_loop_stop(agent->loop);
	}
}

static int make_socket_dir(const char *socket_path, struct vg_error **err)
{
	char dir[108];
	snprintf(dir, sizeof(dir), "%s", socket_path);
	char *slash = strrchr(dir, '/');
	if (slash == NULL || slash == dir)
		return 0;
	*slash = '\0';
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return vg_error_set_errno(err, errno, "create the socket directory %s", dir);
	return 0;
}

static int start(struct agent *agent, struct vg_error **err)
{
	const struct vg_config *config = agent->config;
	int ret = vg_grpc_loop_new(&agent->loop, err);
	if (ret < 0)
		return ret;
	ret = vg_device_table_scan(&agent->devices, config, true, err);
	if (ret < 0)
		return vg_error_prefix(err, "inventory");
	ret = vg_sandboxes_init(&agent->sandboxes, config, agent->loop, &agent->devices, err);
	if (ret == 0)
		ret = vg_sandboxes_recover(&agent->sandboxes, err);
	if (ret < 0)
		return ret;
	agent->sandboxes.on_change = on_change;
	agent->sandboxes.on_change_ctx = agent;

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	agent->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (agent->signal_fd < 0)
		return vg_error_set_errno(err, errno, "signalfd");
	if (vg_grpc_loop_watch_fd(agent->loop, agent->signal_fd, on_signal, agent, err) == 0)
		return -EIO;

	struct vg_grpc_server *server = NULL;
	ret = make_socket_dir(config->socket, err);
	if (ret == 0)
		ret = vg_grpc_server_new(agent->loop, config->socket, 0660, &server, err);
	if (ret == 0)
		ret = vg_cri_service_register(server, &agent->sandboxes, err);
	if (ret == 0)
		ret = vg_inventory_service_register(server, &agent->devices, &agent->inventory, err);
	if (ret == 0)
		ret = vg_grpc_server_start(server, err);
	if (ret < 0)
		return ret;
	agent->health_timer = vg_grpc_loop_add_timer(agent->loop, config->health_interval_s * 1000,
						     health_tick, agent);
	size_t n_gpus = agent->devices.scan.inventory->n_gpus, n_sandboxes = 0;
	for (struct vg_sandbox *sb = agent->sandboxes.list; sb; sb = sb->next)
		n_sandboxes++;
	vg_info("serving on %s: %zu GPU(s), %zu sandbox(es) recovered from %s", config->socket,
		n_gpus, n_sandboxes, config->state_dir);
	return 0;
}

int vg_agent_serve(const struct vg_config *config, struct vg_error **err)
{
	struct agent agent = { .config = config, .signal_fd = -1 };
	int ret = start(&agent, err);
	if (ret == 0)
		ret = vg_grpc_loop_run(agent.loop, err);
	/* Shims and VMs stay: a restarted agent adopts them from the state directory. */
	vg_sandboxes_detach(&agent.sandboxes);
	vg_inventory_service_free(agent.inventory);
	vg_grpc_loop_free(agent.loop);
	vg_device_table_clear(&agent.devices);
	if (agent.signal_fd >= 0)
		close(agent.signal_fd);
	return ret;
}

#include "agent/daemon.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/cri_service.h"
#include "agent/device_table.h"
#include "agent/deviceplugin.h"
#include "agent/inventory_service.h"
#include "agent/kube_sync.h"
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
	struct vg_device_plugin *plugin; /* NULL when kubelet_dir is "" */
	struct vg_kube_sync *kube; /* NULL when Kubernetes is off */
	int signal_fd;
	/* GPU rescans run on their own thread so a slow sysfs never stalls the gRPC loop; the
	 * result is handed over under the mutex and installed on the loop thread. */
	pthread_t health_thread;
	bool health_started;
	pthread_mutex_t health_mu;
	pthread_cond_t health_cv;
	bool health_stop;
	bool rescan_now;
	struct vg_node_scan pending;
	bool has_pending;
	struct vg_host_report host; /* the last full scan's host checks, for the rescans */
};

static void on_change(void *ctx)
{
	struct agent *agent = ctx;
	vg_device_table_refresh(&agent->devices);
	vg_inventory_service_publish(agent->inventory);
	vg_device_plugin_publish(agent->plugin);
	vg_kube_sync_observe(agent->kube, &agent->devices, &agent->sandboxes);
}

static void *health_main(void *arg)
{
	struct agent *agent = arg;
	pthread_mutex_lock(&agent->health_mu);
	while (!agent->health_stop) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		long long interval_ns = (long long)(agent->config->health_interval_s * 1e9);
		long long nsec = until.tv_nsec + interval_ns % 1000000000LL;
		until.tv_sec += (time_t)(interval_ns / 1000000000LL + nsec / 1000000000LL);
		until.tv_nsec = (long)(nsec % 1000000000LL);
		while (!agent->health_stop && !agent->rescan_now &&
		       pthread_cond_timedwait(&agent->health_cv, &agent->health_mu, &until) == 0)
			;
		if (agent->health_stop)
			break;
		agent->rescan_now = false;
		pthread_mutex_unlock(&agent->health_mu);
		struct vg_node_scan scan;
		cleanup_error struct vg_error *err = NULL;
		int ret = vg_inventory_rescan(agent->config, &agent->host, &scan, &err);
		if (ret < 0) {
			vg_warn("GPU rescan failed, keeping the last inventory: %s", err->msg);
			vg_node_scan_clear(&scan);
		}
		pthread_mutex_lock(&agent->health_mu);
		if (ret == 0) {
			if (agent->has_pending)
				vg_node_scan_clear(&agent->pending);
			agent->pending = scan;
			agent->has_pending = true;
			vg_grpc_loop_wake(agent->loop);
		}
	}
	pthread_mutex_unlock(&agent->health_mu);
	return NULL;
}

/* On the loop thread: install the newest rescan, if one is waiting. */
static void on_wake(void *ctx)
{
	struct agent *agent = ctx;
	struct vg_node_scan scan;
	pthread_mutex_lock(&agent->health_mu);
	bool have = agent->has_pending;
	if (have)
		scan = agent->pending;
	agent->has_pending = false;
	pthread_mutex_unlock(&agent->health_mu);
	if (!have)
		return;
	cleanup_error struct vg_error *err = NULL;
	if (vg_device_table_install(&agent->devices, &scan, &err) < 0)
		vg_warn("GPU rescan: %s", err->msg);
	on_change(agent);
}

static void request_rescan(struct agent *agent)
{
	pthread_mutex_lock(&agent->health_mu);
	agent->rescan_now = true;
	pthread_cond_signal(&agent->health_cv);
	pthread_mutex_unlock(&agent->health_mu);
}

static void stop_health_thread(struct agent *agent)
{
	if (!agent->health_started)
		return;
	pthread_mutex_lock(&agent->health_mu);
	agent->health_stop = true;
	pthread_cond_signal(&agent->health_cv);
	pthread_mutex_unlock(&agent->health_mu);
	pthread_join(agent->health_thread, NULL);
	if (agent->has_pending)
		vg_node_scan_clear(&agent->pending);
	agent->health_started = false;
}

static void on_signal(void *ctx, int fd)
{
	struct agent *agent = ctx;
	struct signalfd_siginfo info;
	while (read(fd, &info, sizeof(info)) == (ssize_t)sizeof(info)) {
		if (info.ssi_signo == SIGHUP) {
			vg_info("SIGHUP: rescanning GPUs");
			request_rescan(agent);
			continue;
		}
		vg_info("signal %u: shutting down; sandboxes keep running", info.ssi_signo);
		/* Answer waiting callers while the server can still send a status. */
		vg_device_plugin_stop(agent->plugin);
		vg_sandboxes_detach(&agent->sandboxes);
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
	agent->host = agent->devices.scan.host;
	vg_grpc_loop_set_wake_handler(agent->loop, on_wake, agent);
	if (pthread_create(&agent->health_thread, NULL, health_main, agent) != 0)
		return vg_error_set(err, EAGAIN, "cannot start the GPU health thread");
	agent->health_started = true;
	ret = vg_device_plugin_start(config, agent->loop, &agent->devices, on_change, agent,
				     &agent->plugin, err);
	if (ret < 0)
		return vg_error_prefix(err, "device plugin");
	/* The API server is optional: a bad setting or an absent server never stops serving. */
	cleanup_error struct vg_error *kube_err = NULL;
	if (vg_kube_sync_start(config, &agent->kube, &kube_err) < 0)
		vg_err("Kubernetes API disabled: %s", kube_err->msg);
	vg_kube_sync_observe(agent->kube, &agent->devices, &agent->sandboxes);
	size_t n_gpus = agent->devices.scan.inventory->n_gpus, n_sandboxes = 0;
	for (struct vg_sandbox *sb = agent->sandboxes.list; sb; sb = sb->next)
		n_sandboxes++;
	vg_info("serving on %s: %zu GPU(s), %zu sandbox(es) recovered from %s", config->socket,
		n_gpus, n_sandboxes, config->state_dir);
	return 0;
}

int vg_agent_serve(const struct vg_config *config, struct vg_error **err)
{
	struct agent agent = { .config = config,
			       .signal_fd = -1,
			       .health_mu = PTHREAD_MUTEX_INITIALIZER,
			       .health_cv = PTHREAD_COND_INITIALIZER };
	int ret = start(&agent, err);
	if (ret == 0)
		ret = vg_grpc_loop_run(agent.loop, err);
	stop_health_thread(&agent);
	vg_kube_sync_stop(agent.kube);
	/* Shims and VMs stay: a restarted agent adopts them from the state directory. */
	vg_sandboxes_detach(&agent.sandboxes);
	vg_inventory_service_free(agent.inventory);
	vg_device_plugin_free(agent.plugin);
	vg_grpc_loop_free(agent.loop);
	vg_device_table_clear(&agent.devices);
	if (agent.signal_fd >= 0)
		close(agent.signal_fd);
	return ret;
}

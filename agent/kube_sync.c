#include "agent/kube_sync.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/device_table.h"
#include "agent/sandboxes.h"
#include "lib/cleanup.h"
#include "lib/config.h"
#include "lib/error.h"
#include "lib/kube/kube_client.h"
#include "lib/kube/kube_node_api.h"
#include "lib/kube/kube_objects.h"
#include "lib/log.h"

/* Events wait here while the API server is away; beyond this the oldest are dropped. */
#define MAX_QUEUED_EVENTS 64
#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 60000

struct gpu_seen {
	char bdf[VG_BDF_STRLEN];
	int index;
	enum vg_gpu_state state;
};

struct vg_kube_sync {
	char node[254];
	char events_namespace[64];
	bool resource_slices;
	int64_t resync_ms;
	struct vg_kube_client *client;
	pthread_t thread;
	bool started;

	/* Loop thread only: what the last observe saw, to notice what turned bad. */
	struct gpu_seen *seen;
	size_t n_seen;
	char (*reported)[65]; /* failed sandboxes already reported */
	size_t n_reported;

	/* Handed from the loop thread to the worker under mu. */
	pthread_mutex_t mu;
	pthread_cond_t cv; /* on CLOCK_MONOTONIC */
	bool stop;
	struct vg_kube_gpu *gpus;
	size_t n_gpus;
	bool ready;
	uint64_t version; /* bumped when gpus or ready change */
	struct vg_kube_event events[MAX_QUEUED_EVENTS];
	size_t n_events;
	size_t dropped_events;

	/* Worker thread only. */
	uint64_t labels_done; /* the version the node's labels show; 0: not yet */
	uint64_t slice_done;
	int64_t next_resync_ms;
	int64_t retry_at_ms;
	unsigned failures;
	char node_uid[128];
	int64_t generation;
	bool unserved_logged;
	bool too_many_logged;
	uint64_t event_seq;
	unsigned rand_state;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *env_lookup(const char *name)
{
	return getenv(name);
}

/* ---- The loop thread's side ---------------------------------------------------------- */

/* Called with mu held. */
static void push_event(struct vg_kube_sync *s, const struct vg_kube_event *ev)
{
	if (s->n_events == MAX_QUEUED_EVENTS) {
		memmove(&s->events[0], &s->events[1], sizeof(s->events[0]) * (MAX_QUEUED_EVENTS - 1));
		s->n_events--;
		s->dropped_events++;
	}
	s->events[s->n_events++] = *ev;
}

static void node_event(struct vg_kube_sync *s, struct vg_kube_event *ev, const char *type,
		       const char *reason)
{
	snprintf(ev->type, sizeof(ev->type), "%s", type);
	snprintf(ev->reason, sizeof(ev->reason), "%s", reason);
	snprintf(ev->kind, sizeof(ev->kind), "Node");
	snprintf(ev->name, sizeof(ev->name), "%s", s->node);
	ev->time = time(NULL);
}

static const struct gpu_seen *find_seen(const struct vg_kube_sync *s, const char *bdf)
{
	for (size_t i = 0; i < s->n_seen; i++)
		if (strcmp(s->seen[i].bdf, bdf) == 0)
			return &s->seen[i];
	return NULL;
}

/* Called with mu held: Events for GPUs that turned unhealthy or unsupported (at start too),
 * came back, or left the bus. */
static void observe_gpus(struct vg_kube_sync *s, const struct vg_inventory *inv)
{
	size_t n = inv ? inv->n_gpus : 0;
	struct gpu_seen *seen = calloc(n ? n : 1, sizeof(*seen));
	if (seen == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		const struct vg_gpu *g = &inv->gpus[i];
		const struct gpu_seen *prev = find_seen(s, g->fn.bdf);
		struct vg_kube_event ev = { 0 };
		bool bad = g->state == VG_GPU_UNHEALTHY || g->state == VG_GPU_UNSUPPORTED;
		if (bad && (prev == NULL || prev->state != g->state)) {
			node_event(s, &ev, "Warning",
				   g->state == VG_GPU_UNHEALTHY ? "GPUUnhealthy" : "GPUUnsupported");
			snprintf(ev.message, sizeof(ev.message), "GPU %d (%s, %s) is %s: %s",
				 g->index, g->fn.bdf, g->name, vg_gpu_state_name(g->state),
				 g->n_reasons ? g->reasons[0] : "no reason given");
			push_event(s, &ev);
		} else if (!bad && prev != NULL && prev->state == VG_GPU_UNHEALTHY) {
			node_event(s, &ev, "Normal", "GPUHealthy");
			snprintf(ev.message, sizeof(ev.message), "GPU %d (%s, %s) is healthy again",
				 g->index, g->fn.bdf, g->name);
			push_event(s, &ev);
		}
		snprintf(seen[i].bdf, sizeof(seen[i].bdf), "%s", g->fn.bdf);
		seen[i].index = g->index;
		seen[i].state = g->state;
	}
	for (size_t i = 0; i < s->n_seen; i++) {
		bool still = false;
		for (size_t j = 0; j < n && !still; j++)
			still = strcmp(s->seen[i].bdf, seen[j].bdf) == 0;
		if (still)
			continue;
		struct vg_kube_event ev = { 0 };
		node_event(s, &ev, "Warning", "GPUGone");
		snprintf(ev.message, sizeof(ev.message), "GPU %d (%s) is no longer on the PCI bus",
			 s->seen[i].index, s->seen[i].bdf);
		push_event(s, &ev);
	}
	free(s->seen);
	s->seen = seen;
	s->n_seen = n;
}

static bool was_reported(const struct vg_kube_sync *s, const char *id)
{
	for (size_t i = 0; i < s->n_reported; i++)
		if (strcmp(s->reported[i], id) == 0)
			return true;
	return false;
}

/* Called with mu held: one Event per failed sandbox, on its pod when it has one. */
static void observe_sandboxes(struct vg_kube_sync *s, const struct vg_sandboxes *sandboxes)
{
	size_t count = 0;
	for (const struct vg_sandbox *sb = sandboxes ? sandboxes->list : NULL; sb; sb = sb->next)
		count++;
	char(*reported)[65] = calloc(count ? count : 1, sizeof(*reported));
	if (reported == NULL)
		return;
	size_t n = 0;
	for (const struct vg_sandbox *sb = sandboxes ? sandboxes->list : NULL; sb; sb = sb->next) {
		if (sb->state != VG_SB_FAILED)
			continue;
		snprintf(reported[n++], sizeof(reported[0]), "%s", sb->id);
		if (was_reported(s, sb->id))
			continue;
		struct vg_kube_event ev = { 0 };
		node_event(s, &ev, "Warning", "SandboxFailed");
		if (sb->pod_namespace[0] != '\0' && sb->name[0] != '\0') {
			snprintf(ev.kind, sizeof(ev.kind), "Pod");
			snprintf(ev.name, sizeof(ev.name), "%s", sb->name);
			snprintf(ev.pod_namespace, sizeof(ev.pod_namespace), "%s", sb->pod_namespace);
			snprintf(ev.uid, sizeof(ev.uid), "%s", sb->uid);
		}
		char gpus[16 * 14] = "none";
		for (size_t i = 0, off = 0; i < sb->n_gpus && off < sizeof(gpus); i++)
			off += (size_t)snprintf(gpus + off, sizeof(gpus) - off, "%s%s", i ? "," : "",
						sb->gpus[i]);
		snprintf(ev.message, sizeof(ev.message),
			 "vmgpu sandbox %s on node %.253s failed: %.400s (GPUs: %.223s)", sb->id,
			 s->node, sb->reason[0] ? sb->reason : "no reason given", gpus);
		push_event(s, &ev);
	}
	free(s->reported);
	s->reported = reported;
	s->n_reported = n;
}

void vg_kube_sync_observe(struct vg_kube_sync *s, const struct vg_device_table *devices,
			  const struct vg_sandboxes *sandboxes)
{
	if (s == NULL)
		return;
	const struct vg_inventory *inv = devices->scan.inventory;
	size_t n = inv ? inv->n_gpus : 0;
	cleanup_free struct vg_kube_gpu *gpus = calloc(n ? n : 1, sizeof(*gpus));
	if (gpus == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		const struct vg_gpu *g = &inv->gpus[i];
		struct vg_kube_gpu *k = &gpus[i];
		k->index = g->index;
		snprintf(k->bdf, sizeof(k->bdf), "%s", g->fn.bdf);
		snprintf(k->pcie_root, sizeof(k->pcie_root), "%s", g->pcie_root);
		k->numa_node = g->numa_node;
		k->iommu_group = g->group.number;
		k->vendor_id = g->fn.vendor_id;
		k->device_id = g->fn.device_id;
		snprintf(k->product, sizeof(k->product), "%s", g->name);
		snprintf(k->state, sizeof(k->state), "%s", vg_device_table_state(devices, i));
	}
	bool ready = vg_node_scan_ready(&devices->scan);

	pthread_mutex_lock(&s->mu);
	size_t events_before = s->n_events + s->dropped_events;
	observe_gpus(s, inv);
	observe_sandboxes(s, sandboxes);
	/* calloc zeroed the padding, so memcmp compares what matters. */
	bool changed = s->version == 0 || n != s->n_gpus || ready != s->ready ||
		       memcmp(gpus, s->gpus, n * sizeof(*gpus)) != 0;
	if (changed) {
		free(s->gpus);
		s->gpus = TAKE_PTR(gpus);
		s->n_gpus = n;
		s->ready = ready;
		s->version++;
	}
	if (changed || s->n_events + s->dropped_events != events_before)
		pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* ---- The worker thread ----------------------------------------------------------------- */

struct snapshot {
	struct vg_kube_gpu *gpus;
	size_t n_gpus;
	bool ready;
	uint64_t version;
	struct vg_kube_event events[MAX_QUEUED_EVENTS];
	size_t n_events;
	size_t events_sent; /* the first ones, in order */
};

static void note_failure(struct vg_kube_sync *s, const struct vg_error *err, int64_t delay_ms)
{
	/* The first failure of a streak and every tenth at warn, the rest at debug: an API
	 * server that is away for hours must not flood the node's log. */
	enum vg_log_level level = s->failures % 10 == 0 ? VG_LOG_WARN : VG_LOG_DEBUG;
	vg_log(level, "Kubernetes API: %s; failed attempt %u, retrying in %lld ms", err->msg,
	       s->failures + 1, (long long)delay_ms);
}

static int sync_labels(struct vg_kube_sync *s, const struct snapshot *snap, struct vg_error **err)
{
	json_object *desired = vg_kube_node_labels(snap->gpus, snap->n_gpus, snap->ready);
	bool patched = false;
	int ret = vg_kube_node_apply_labels(s->client, s->node, desired, s->node_uid, &patched, err);
	if (ret == 0 && patched)
		vg_info("node %s: labels %s", s->node, vg_kube_json_text(desired));
	json_object_put(desired);
	return ret;
}

static int send_events(struct vg_kube_sync *s, struct snapshot *snap, struct vg_error **err)
{
	for (; snap->events_sent < snap->n_events; snap->events_sent++) {
		struct vg_kube_event *ev = &snap->events[snap->events_sent];
		if (strcmp(ev->kind, "Node") == 0 && ev->uid[0] == '\0')
			snprintf(ev->uid, sizeof(ev->uid), "%s", s->node_uid);
		long status = 0;
		cleanup_error struct vg_error *post_err = NULL;
		int ret = vg_kube_event_post(s->client, ev, s->node, s->events_namespace,
					     (uint64_t)ev->time << 20 | (s->event_seq++ & 0xfffff),
					     &status, &post_err);
		if (ret == 0) {
			vg_debug("Event %s posted: %s", ev->reason, ev->message);
			continue;
		}
		/* No answer, or the server is busy: keep it for the next attempt. A refusal
		 * (403, 422...) would only come back again, so that Event is dropped. */
		if (status == 0 || status >= 500 || status == 429) {
			vg_error_keep_first(err, TAKE_PTR(post_err));
			return ret;
		}
		vg_warn("Kubernetes API refused Event %s, dropping it: %s", ev->reason, post_err->msg);
	}
	return 0;
}

static int sync_slice(struct vg_kube_sync *s, const struct snapshot *snap, struct vg_error **err)
{
	enum vg_kube_slice_result result;
	if (snap->n_gpus > VG_KUBE_SLICE_MAX_DEVICES && !s->too_many_logged) {
		vg_warn("ResourceSlice: %zu GPUs, but a slice holds %d devices; the rest are left out",
			snap->n_gpus, VG_KUBE_SLICE_MAX_DEVICES);
		s->too_many_logged = true;
	}
	int ret = vg_kube_slice_apply(s->client, s->node, s->node_uid, snap->gpus, snap->n_gpus,
				      &s->generation, &result, err);
	if (ret < 0)
		return ret;
	if (result == VG_KUBE_SLICE_UNSERVED) {
		if (!s->unserved_logged)
			vg_err("Kubernetes API: resource.k8s.io/v1 ResourceSlices are not served (they "
			       "need Kubernetes 1.34 or newer with DRA); set resource_slices: false. "
			       "Trying again every %lld s",
			       (long long)(s->resync_ms / 1000));
		s->unserved_logged = true;
	} else if (result != VG_KUBE_SLICE_UNCHANGED) {
		vg_info("ResourceSlice %s-vmgpu: pool generation %lld, %zu GPU(s)", s->node,
			(long long)s->generation, snap->n_gpus);
	}
	return 0;
}

/* One pass; a failure leaves its part for the next pass. */
static int sync_once(struct vg_kube_sync *s, struct snapshot *snap, struct vg_error **err)
{
	int ret = 0;
	/* Labels first: the GET also learns the node's uid, which Events and the slice use. */
	if (snap->version != s->labels_done) {
		ret = sync_labels(s, snap, err);
		if (ret < 0)
			return ret;
		s->labels_done = snap->version;
	}
	ret = send_events(s, snap, err);
	if (ret < 0)
		return ret;
	if (s->resource_slices && snap->version != s->slice_done) {
		ret = sync_slice(s, snap, err);
		if (ret < 0)
			return ret;
		s->slice_done = snap->version;
	}
	return 0;
}

static bool work_pending(const struct vg_kube_sync *s, int64_t now)
{
	return now >= s->next_resync_ms || s->version != s->labels_done || s->n_events > 0 ||
	       (s->resource_slices && s->version != s->slice_done);
}

static void wait_until(struct vg_kube_sync *s, int64_t deadline_ms)
{
	struct timespec until = { .tv_sec = deadline_ms / 1000,
				  .tv_nsec = (deadline_ms % 1000) * 1000000 };
	pthread_cond_timedwait(&s->cv, &s->mu, &until);
}

/* Called with mu held: the Events that were not sent go back in front of newer ones. */
static void requeue_events(struct vg_kube_sync *s, const struct snapshot *snap)
{
	size_t unsent = snap->n_events - snap->events_sent;
	if (unsent == 0)
		return;
	size_t keep_new = s->n_events;
	if (unsent + keep_new > MAX_QUEUED_EVENTS) {
		size_t drop = unsent + keep_new - MAX_QUEUED_EVENTS;
		s->dropped_events += drop;
		unsent = drop >= unsent ? 0 : unsent - drop;
	}
	memmove(&s->events[unsent], &s->events[0], sizeof(s->events[0]) * keep_new);
	memcpy(&s->events[0], &snap->events[snap->n_events - unsent],
	       sizeof(s->events[0]) * unsent);
	s->n_events = unsent + keep_new;
}

static int64_t backoff_ms(struct vg_kube_sync *s)
{
	unsigned shift = s->failures < 7 ? s->failures : 7;
	int64_t base = (int64_t)BACKOFF_FIRST_MS << shift;
	if (base > BACKOFF_MAX_MS)
		base = BACKOFF_MAX_MS;
	/* +-20% jitter, so agents on many nodes do not retry in step after an outage. */
	int64_t jitter = base / 5;
	return base - jitter + (int64_t)(rand_r(&s->rand_state) % (unsigned)(2 * jitter + 1));
}

static void *sync_main(void *arg)
{
	struct vg_kube_sync *s = arg;
	struct snapshot *snap = calloc(1, sizeof(*snap));
	pthread_mutex_lock(&s->mu);
	while (!s->stop && snap != NULL) {
		if (s->version == 0) {
			/* Nothing observed yet: labels for zero GPUs would be a lie. */
			pthread_cond_wait(&s->cv, &s->mu);
			continue;
		}
		int64_t now = now_ms();
		bool pending = work_pending(s, now);
		if (!pending || now < s->retry_at_ms) {
			wait_until(s, pending ? s->retry_at_ms : s->next_resync_ms);
			continue;
		}
		if (now >= s->next_resync_ms) {
			/* Someone may have removed a label or the slice: check them again. */
			s->labels_done = s->slice_done = 0;
			s->next_resync_ms = now + s->resync_ms;
		}
		free(snap->gpus);
		memset(snap, 0, sizeof(*snap));
		snap->gpus = malloc((s->n_gpus ? s->n_gpus : 1) * sizeof(*snap->gpus));
		if (snap->gpus == NULL)
			break;
		memcpy(snap->gpus, s->gpus, s->n_gpus * sizeof(*snap->gpus));
		snap->n_gpus = s->n_gpus;
		snap->ready = s->ready;
		snap->version = s->version;
		memcpy(snap->events, s->events, s->n_events * sizeof(s->events[0]));
		snap->n_events = s->n_events;
		s->n_events = 0;
		if (s->dropped_events > 0)
			vg_warn("Kubernetes API: %zu Event(s) dropped while the API server was away",
				s->dropped_events);
		s->dropped_events = 0;
		pthread_mutex_unlock(&s->mu);

		cleanup_error struct vg_error *err = NULL;
		int ret = sync_once(s, snap, &err);

		pthread_mutex_lock(&s->mu);
		requeue_events(s, snap);
		if (ret < 0 && ret != -ECANCELED) {
			int64_t delay = backoff_ms(s);
			note_failure(s, err, delay);
			s->retry_at_ms = now_ms() + delay;
			s->failures++;
		} else if (ret == 0) {
			if (s->failures > 0)
				vg_info("Kubernetes API: in sync again after %u failed attempt(s)",
					s->failures);
			s->failures = 0;
			s->retry_at_ms = 0;
		}
	}
	pthread_mutex_unlock(&s->mu);
	if (snap != NULL)
		free(snap->gpus);
	free(snap);
	return NULL;
}

/* ---- Start and stop -------------------------------------------------------------------- */

static int resolve_node_name(const struct vg_config *config, char *out, size_t size,
			     struct vg_error **err)
{
	const char *name = config->node_name[0] ? config->node_name : getenv("NODE_NAME");
	char host[256] = "";
	if (name == NULL || name[0] == '\0') {
		/* The kubelet's default node name is the host name, lowercased. */
		if (gethostname(host, sizeof(host) - 1) < 0)
			return vg_error_set_errno(err, errno, "node_name is unset and gethostname");
		for (char *c = host; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		vg_warn("Kubernetes API: node_name and NODE_NAME are unset; using the host name "
			"'%s'",
			host);
		name = host;
	}
	if (!vg_kube_is_dns_subdomain(name) || strlen(name) >= size)
		return vg_error_set(err, EINVAL,
				    "node name '%s' is not a valid Kubernetes node name (lowercase "
				    "letters, digits, '-' and '.', at most 253)",
				    name);
	snprintf(out, size, "%s", name);
	return 0;
}

static bool want_kube(const struct vg_config *config)
{
	if (strcmp(config->kube_enabled, "auto") == 0)
		return config->kubeconfig[0] != '\0' || vg_kube_in_cluster(env_lookup);
	return strcmp(config->kube_enabled, "true") == 0;
}

int vg_kube_sync_start(const struct vg_config *config, struct vg_kube_sync **out,
		       struct vg_error **err)
{
	*out = NULL;
	if (!want_kube(config)) {
		vg_debug("Kubernetes API: off (kube_enabled: %s)", config->kube_enabled);
		return 0;
	}
	const char *ns = config->events_namespace;
	if (!vg_kube_is_dns_subdomain(ns) || strchr(ns, '.') != NULL || strlen(ns) > 63)
		return vg_error_set(err, EINVAL, "events_namespace '%s' is not a namespace name", ns);
	struct vg_kube_sync *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	snprintf(s->events_namespace, sizeof(s->events_namespace), "%s", ns);
	s->resource_slices = config->resource_slices;
	s->resync_ms = config->label_interval_s * 1000;
	s->rand_state = (unsigned)time(NULL) ^ (unsigned)getpid();
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &attr);
	pthread_condattr_destroy(&attr);

	struct vg_kube_endpoint ep;
	int ret = resolve_node_name(config, s->node, sizeof(s->node), err);
	if (ret == 0)
		ret = config->kubeconfig[0]
			      ? vg_kube_endpoint_from_kubeconfig(&ep, config->kubeconfig, err)
			      : vg_kube_endpoint_in_cluster(&ep, VG_KUBE_SERVICE_ACCOUNT_DIR,
							    env_lookup, err);
	char server[sizeof(ep.server)] = "";
	if (ret == 0) {
		snprintf(server, sizeof(server), "%s", ep.server);
		ret = vg_kube_client_new(&ep, NULL, &s->client, err);
	}
	if (ret == 0 && pthread_create(&s->thread, NULL, sync_main, s) != 0)
		ret = vg_error_set(err, EAGAIN, "cannot start the Kubernetes API thread");
	if (ret < 0) {
		vg_kube_sync_stop(s);
		return ret;
	}
	s->started = true;
	vg_info("Kubernetes API %s: node %s, labels checked every %lld s, Events to namespace %s, "
		"ResourceSlice %s",
		server, s->node, config->label_interval_s, s->events_namespace,
		s->resource_slices ? "on" : "off");
	*out = s;
	return 0;
}

void vg_kube_sync_stop(struct vg_kube_sync *s)
{
	if (s == NULL)
		return;
	if (s->started) {
		pthread_mutex_lock(&s->mu);
		s->stop = true;
		pthread_cond_signal(&s->cv);
		pthread_mutex_unlock(&s->mu);
		/* A request in flight ends within a second instead of at its timeout. */
		vg_kube_client_cancel(s->client);
		pthread_join(s->thread, NULL);
	}
	vg_kube_client_free(s->client);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s->gpus);
	free(s->seen);
	free(s->reported);
	free(s);
}

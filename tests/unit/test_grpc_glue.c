/*
 * The grpc glue end to end in one process: a loop thread serves sockets in a private temp dir,
 * and the test thread talks to it with the blocking clients. Everything that runs on the loop
 * thread only records results; the assertions happen on the test thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/error.h"
#include "lib/grpc/vg_grpc.h"

#define SVC "/vmgpu.test.Glue/"
#define REGISTER "/vmgpu.test.Registration/Register"

static struct {
	char dir[64];
	char main_socket[128];
	char reg_socket[128];
	struct vg_grpc_loop *loop;
	struct vg_grpc_server *main_server;
	struct vg_grpc_server *reg_server;
	pthread_t loop_thread;
	bool loop_thread_running;
	int loop_run_rc;

	/* jobs for the loop thread, run by the wake handler */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct job *jobs;

	/* the Snapshots stream (loop thread) and the generation another thread moves (mu) */
	struct vg_grpc_stream *snap_stream;
	int snap_generation;
	int snap_sent;
	bool client_saw_second; /* mu */

	/* Never: calls kept without an answer (loop thread) */
	struct vg_grpc_call *held[8];
	size_t n_held;

	atomic_int hold_open;
	atomic_int hold_closed;
} g;

struct job {
	void (*fn)(void *arg);
	void *arg;
	bool done;
	struct job *next;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

/* Runs fn(arg) on the loop thread and waits for it: the wake from another thread. */
static void run_on_loop(void (*fn)(void *), void *arg)
{
	struct job job = { fn, arg, false, NULL };
	pthread_mutex_lock(&g.mu);
	struct job **tail = &g.jobs;
	while (*tail != NULL)
		tail = &(*tail)->next;
	*tail = &job;
	pthread_mutex_unlock(&g.mu);
	vg_grpc_loop_wake(g.loop);
	pthread_mutex_lock(&g.mu);
	while (!job.done)
		pthread_cond_wait(&g.cond, &g.mu);
	pthread_mutex_unlock(&g.mu);
}

static void send_snapshot(int generation)
{
	char text[16];
	snprintf(text, sizeof(text), "snap-%d", generation);
	if (g.snap_stream != NULL && vg_grpc_stream_send(g.snap_stream, (const uint8_t *)text,
							 strlen(text)) == 0)
		g.snap_sent = generation;
}

static void on_wake(void *ctx)
{
	(void)ctx;
	pthread_mutex_lock(&g.mu);
	struct job *jobs = g.jobs;
	g.jobs = NULL;
	int generation = g.snap_generation;
	pthread_mutex_unlock(&g.mu);
	while (jobs != NULL) {
		struct job *job = jobs;
		jobs = job->next;
		job->fn(job->arg);
		pthread_mutex_lock(&g.mu);
		job->done = true;
		pthread_cond_broadcast(&g.cond);
		pthread_mutex_unlock(&g.mu);
	}
	if (generation == 3 && g.snap_sent == 2 && g.snap_stream != NULL) {
		send_snapshot(3);
		vg_grpc_stream_finish(g.snap_stream, VG_GRPC_OK, NULL);
	}
}

/* ---- handlers (loop thread) ---- */

static void echo(void *ctx, struct vg_grpc_call *call, const uint8_t *req, size_t len)
{
	(void)ctx;
	vg_grpc_call_reply(call, req, len);
}

struct deferred {
	struct vg_grpc_call *call;
	char text[64];
};

static void deferred_answer(void *ctx)
{
	struct deferred *d = ctx;
	vg_grpc_call_reply(d->call, (const uint8_t *)d->text, strlen(d->text));
	free(d);
}

static void deferred(void *ctx, struct vg_grpc_call *call, const uint8_t *req, size_t len)
{
	struct vg_grpc_loop *loop = ctx;
	struct deferred *d = calloc(1, sizeof(*d));
	d->call = call;
	snprintf(d->text, sizeof(d->text), "deferred:%.*s", (int)len, (const char *)req);
	vg_grpc_loop_add_timer(loop, 100, deferred_answer, d);
}

static void fail_not_found(void *ctx, struct vg_grpc_call *call, const uint8_t *req, size_t len)
{
	(void)ctx;
	char msg[64];
	snprintf(msg, sizeof(msg), "no gpu named %.*s", (int)len, (const char *)req);
	vg_grpc_call_fail(call, VG_GRPC_NOT_FOUND, msg);
}

static void never(void *ctx, struct vg_grpc_call *call, const uint8_t *req, size_t len)
{
	(void)ctx;
	(void)req;
	(void)len;
	if (g.n_held < 8)
		g.held[g.n_held++] = call;
}

static void register_node(void *ctx, struct vg_grpc_call *call, const uint8_t *req, size_t len)
{
	(void)ctx;
	char text[64];
	int n = snprintf(text, sizeof(text), "registered:%.*s", (int)len, (const char *)req);
	vg_grpc_call_reply(call, (const uint8_t *)text, (size_t)n);
}

static void snap_second(void *ctx)
{
	(void)ctx;
	send_snapshot(2);
}

static void snap_open(void *ctx, struct vg_grpc_stream *stream, const uint8_t *req, size_t len)
{
	(void)req;
	(void)len;
	g.snap_stream = stream;
	send_snapshot(1);
	vg_grpc_loop_add_timer(ctx, 30, snap_second, NULL);
}

static void snap_closed(void *ctx, struct vg_grpc_stream *stream)
{
	(void)ctx;
	if (g.snap_stream == stream)
		g.snap_stream = NULL;
}

static void coalesce_open(void *ctx, struct vg_grpc_stream *stream, const uint8_t *req,
			  size_t len)
{
	(void)ctx;
	(void)req;
	(void)len;
	/* The first goes out at once; 2..4 are replaced while it is in flight; 5 follows. */
	for (int i = 1; i <= 5; i++) {
		char text[8];
		snprintf(text, sizeof(text), "m%d", i);
		vg_grpc_stream_send(stream, (const uint8_t *)text, strlen(text));
	}
	vg_grpc_stream_finish(stream, VG_GRPC_OK, NULL);
}

static void hold_open(void *ctx, struct vg_grpc_stream *stream, const uint8_t *req, size_t len)
{
	(void)ctx;
	(void)req;
	(void)len;
	vg_grpc_stream_send(stream, (const uint8_t *)"hello", 5);
	atomic_fetch_add(&g.hold_open, 1);
}

static void hold_closed(void *ctx, struct vg_grpc_stream *stream)
{
	(void)ctx;
	(void)stream;
	atomic_fetch_add(&g.hold_closed, 1);
}

/* ---- set-up ---- */

static void *loop_thread_main(void *arg)
{
	(void)arg;
	struct vg_error *err = NULL;
	g.loop_run_rc = vg_grpc_loop_run(g.loop, &err);
	vg_error_free(err);
	return NULL;
}

static int group_setup(void **state)
{
	(void)state;
	pthread_mutex_init(&g.mu, NULL);
	pthread_cond_init(&g.cond, NULL);
	snprintf(g.dir, sizeof(g.dir), "/tmp/vg-grpc-XXXXXX");
	if (mkdtemp(g.dir) == NULL)
		return -1;
	snprintf(g.main_socket, sizeof(g.main_socket), "%s/main.sock", g.dir);
	snprintf(g.reg_socket, sizeof(g.reg_socket), "%s/reg.sock", g.dir);

	struct vg_error *err = NULL;
	int rc = vg_grpc_loop_new(&g.loop, &err);
	if (rc == 0)
		rc = vg_grpc_server_new(g.loop, g.main_socket, 0600, &g.main_server, &err);
	struct vg_grpc_server *s = g.main_server;
	if (rc == 0)
		rc = vg_grpc_server_add_unary(s, SVC "Echo", echo, NULL, &err);
	if (rc == 0)
		rc = vg_grpc_server_add_unary(s, SVC "Deferred", deferred, g.loop, &err);
	if (rc == 0)
		rc = vg_grpc_server_add_unary(s, SVC "Fail", fail_not_found, NULL, &err);
	if (rc == 0)
		rc = vg_grpc_server_add_unary(s, SVC "Never", never, NULL, &err);
	if (rc == 0)
		rc = vg_grpc_server_add_stream(s, SVC "Snapshots", snap_open, snap_closed, g.loop,
					       &err);
	if (rc == 0)
		rc = vg_grpc_server_add_stream(s, SVC "Coalesce", coalesce_open, NULL, NULL, &err);
	if (rc == 0)
		rc = vg_grpc_server_add_stream(s, SVC "Hold", hold_open, hold_closed, NULL, &err);
	if (rc == 0)
		rc = vg_grpc_server_start(s, &err);
	if (rc < 0) {
		fprintf(stderr, "set-up failed: %s\n", err ? err->msg : "?");
		vg_error_free(err);
		return -1;
	}
	vg_grpc_loop_set_wake_handler(g.loop, on_wake, NULL);
	if (pthread_create(&g.loop_thread, NULL, loop_thread_main, NULL) != 0)
		return -1;
	g.loop_thread_running = true;
	return 0;
}

static void stop_job(void *arg)
{
	vg_grpc_loop_stop(arg);
}

static void stop_loop(void)
{
	if (g.loop_thread_running) {
		run_on_loop(stop_job, g.loop);
		pthread_join(g.loop_thread, NULL);
		g.loop_thread_running = false;
	}
	vg_grpc_loop_free(g.loop);
	g.loop = NULL;
}

static void remove_dir(const char *dir)
{
	const char *names[] = { "main.sock", "main.sock.lock", "reg.sock", "reg.sock.lock" };
	char path[192];
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static int group_teardown(void **state)
{
	(void)state;
	if (g.loop != NULL)
		stop_loop();
	remove_dir(g.dir);
	pthread_cond_destroy(&g.cond);
	pthread_mutex_destroy(&g.mu);
	return 0;
}

/* ---- tests ---- */

static void call_ok(const char *method, const uint8_t *req, size_t len,
		    struct vg_grpc_reply *reply)
{
	struct vg_error *err = NULL;
	int rc = vg_grpc_call_blocking(g.main_socket, method, req, len, 20000, reply, &err);
	if (rc < 0)
		fail_msg("%s: %s", method, err->msg);
}

static void echoes_bytes_exactly(void **state)
{
	(void)state;
	struct vg_grpc_reply reply;
	call_ok(SVC "Echo", (const uint8_t *)"ping", 4, &reply);
	assert_int_equal(reply.code, VG_GRPC_OK);
	assert_int_equal(reply.message_len, 4);
	assert_memory_equal(reply.message, "ping", 4);
	assert_string_equal(reply.details, "");
	vg_grpc_reply_clear(&reply);

	/* An empty message is a message: non-NULL, length 0. */
	call_ok(SVC "Echo", (const uint8_t *)"", 0, &reply);
	assert_int_equal(reply.code, VG_GRPC_OK);
	assert_non_null(reply.message);
	assert_int_equal(reply.message_len, 0);
	vg_grpc_reply_clear(&reply);

	/* 3 MB crosses hundreds of slices each way, and the default 4 MiB limit is raised. */
	size_t big_len = 3 * 1024 * 1024 + 17;
	uint8_t *big = malloc(big_len);
	uint32_t x = 2463534242u;
	for (size_t i = 0; i < big_len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		big[i] = (uint8_t)x;
	}
	call_ok(SVC "Echo", big, big_len, &reply);
	assert_int_equal(reply.code, VG_GRPC_OK);
	assert_int_equal(reply.message_len, big_len);
	assert_memory_equal(reply.message, big, big_len);
	vg_grpc_reply_clear(&reply);
	free(big);
}

static void answers_later_from_a_timer(void **state)
{
	(void)state;
	struct vg_grpc_reply reply;
	int64_t start = now_ms();
	call_ok(SVC "Deferred", (const uint8_t *)"abc", 3, &reply);
	assert_true(now_ms() - start >= 95);
	assert_int_equal(reply.code, VG_GRPC_OK);
	assert_int_equal(reply.message_len, strlen("deferred:abc"));
	assert_memory_equal(reply.message, "deferred:abc", reply.message_len);
	vg_grpc_reply_clear(&reply);
}

static void fails_with_code_and_message(void **state)
{
	(void)state;
	struct vg_grpc_reply reply;
	call_ok(SVC "Fail", (const uint8_t *)"gpu7", 4, &reply);
	assert_int_equal(reply.code, VG_GRPC_NOT_FOUND);
	assert_string_equal(reply.details, "no gpu named gpu7");
	assert_null(reply.message);
	vg_grpc_reply_clear(&reply);

	assert_int_equal(vg_grpc_code_from_errno(ENOENT), VG_GRPC_NOT_FOUND);
	assert_int_equal(vg_grpc_code_from_errno(-EBUSY), VG_GRPC_FAILED_PRECONDITION);
	assert_int_equal(vg_grpc_code_from_errno(EIO), VG_GRPC_INTERNAL);
}

static void unknown_method_is_unimplemented_at_once(void **state)
{
	(void)state;
	const char *methods[] = { SVC "Nope", "/other.Service/Thing" };
	for (size_t i = 0; i < 2; i++) {
		struct vg_grpc_reply reply;
		int64_t start = now_ms();
		call_ok(methods[i], (const uint8_t *)"x", 1, &reply);
		assert_int_equal(reply.code, VG_GRPC_UNIMPLEMENTED);
		assert_non_null(strstr(reply.details, methods[i]));
		assert_true(now_ms() - start < 10000); /* well before the 20 s deadline */
		vg_grpc_reply_clear(&reply);
	}
}

struct received {
	char text[8][16];
	int n;
	int stop_after; /* 0: never stop */
};

static bool collect(void *ctx, const uint8_t *msg, size_t len)
{
	struct received *r = ctx;
	if (r->n < 8)
		snprintf(r->text[r->n], sizeof(r->text[0]), "%.*s", (int)len, (const char *)msg);
	r->n++;
	if (len == 6 && memcmp(msg, "snap-2", 6) == 0) {
		pthread_mutex_lock(&g.mu);
		g.client_saw_second = true;
		pthread_cond_broadcast(&g.cond);
		pthread_mutex_unlock(&g.mu);
	}
	return r->stop_after == 0 || r->n < r->stop_after;
}

/* Another thread moves the state and wakes the loop, as a device watcher would. */
static void *snapshot_trigger_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&g.mu);
	while (!g.client_saw_second)
		pthread_cond_wait(&g.cond, &g.mu);
	g.snap_generation = 3;
	pthread_mutex_unlock(&g.mu);
	vg_grpc_loop_wake(g.loop);
	return NULL;
}

static void streams_three_snapshots(void **state)
{
	(void)state;
	pthread_t trigger;
	assert_int_equal(pthread_create(&trigger, NULL, snapshot_trigger_main, NULL), 0);
	struct received r = { .n = 0 };
	struct vg_grpc_reply status;
	struct vg_error *err = NULL;
	int rc = vg_grpc_stream_blocking(g.main_socket, SVC "Snapshots", (const uint8_t *)"", 0,
					 20000, collect, &r, &status, &err);
	pthread_join(trigger, NULL);
	assert_int_equal(rc, 0);
	assert_int_equal(status.code, VG_GRPC_OK);
	assert_int_equal(r.n, 3);
	assert_string_equal(r.text[0], "snap-1");
	assert_string_equal(r.text[1], "snap-2");
	assert_string_equal(r.text[2], "snap-3");
	vg_grpc_reply_clear(&status);
}

static void newer_snapshot_replaces_unsent_one(void **state)
{
	(void)state;
	struct received r = { .n = 0 };
	struct vg_grpc_reply status;
	assert_int_equal(vg_grpc_stream_blocking(g.main_socket, SVC "Coalesce",
						 (const uint8_t *)"", 0, 20000, collect, &r,
						 &status, NULL),
			 0);
	assert_int_equal(status.code, VG_GRPC_OK);
	assert_int_equal(r.n, 2);
	assert_string_equal(r.text[0], "m1");
	assert_string_equal(r.text[1], "m5");
	vg_grpc_reply_clear(&status);
}

static void client_leaving_a_stream_is_seen(void **state)
{
	(void)state;
	struct received r = { .n = 0, .stop_after = 1 };
	struct vg_grpc_reply status;
	int closed_before = atomic_load(&g.hold_closed);
	assert_int_equal(vg_grpc_stream_blocking(g.main_socket, SVC "Hold", (const uint8_t *)"",
						 0, 20000, collect, &r, &status, NULL),
			 0);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.text[0], "hello");
	assert_int_equal(status.code, VG_GRPC_CANCELLED);
	vg_grpc_reply_clear(&status);
	for (int i = 0; i < 1000 && atomic_load(&g.hold_closed) == closed_before; i++)
		sleep_ms(10);
	assert_int_equal(atomic_load(&g.hold_closed), closed_before + 1);
}

struct server_new_job {
	const char *path;
	struct vg_grpc_server *server;
	int rc;
	int code;
	char msg[512];
	bool start;
};

static void server_new_job(void *arg)
{
	struct server_new_job *j = arg;
	struct vg_error *err = NULL;
	j->rc = vg_grpc_server_new(g.loop, j->path, 0600, &j->server, &err);
	if (j->rc == 0 && j->start) {
		j->rc = vg_grpc_server_add_unary(j->server, REGISTER, register_node, NULL, &err);
		if (j->rc == 0)
			j->rc = vg_grpc_server_start(j->server, &err);
	}
	if (err != NULL) {
		j->code = err->code;
		snprintf(j->msg, sizeof(j->msg), "%s", err->msg);
	}
	vg_error_free(err);
}

static void second_server_on_same_path_is_refused(void **state)
{
	(void)state;
	struct server_new_job j = { .path = g.main_socket };
	run_on_loop(server_new_job, &j);
	assert_true(j.rc < 0);
	assert_int_equal(j.code, EADDRINUSE);
	char pid[32];
	snprintf(pid, sizeof(pid), "pid %ld", (long)getpid());
	assert_non_null(strstr(j.msg, pid));
	/* And the first one still serves. */
	struct vg_grpc_reply reply;
	call_ok(SVC "Echo", (const uint8_t *)"still", 5, &reply);
	assert_int_equal(reply.code, VG_GRPC_OK);
	vg_grpc_reply_clear(&reply);
}

static void unsafe_socket_directories_are_refused(void **state)
{
	(void)state;
	char dir[64];
	snprintf(dir, sizeof(dir), "/tmp/vg-grpc-open-XXXXXX");
	assert_non_null(mkdtemp(dir));
	assert_int_equal(chmod(dir, 0777), 0);
	char path[128];
	snprintf(path, sizeof(path), "%s/x.sock", dir);
	struct server_new_job j = { .path = path };
	run_on_loop(server_new_job, &j);
	assert_int_equal(j.code, EPERM);
	assert_non_null(strstr(j.msg, dir));
	rmdir(dir);

	snprintf(path, sizeof(path), "%s/missing/x.sock", g.dir);
	struct server_new_job k = { .path = path };
	run_on_loop(server_new_job, &k);
	assert_int_equal(k.code, ENOENT);
	assert_non_null(strstr(k.msg, "missing"));
}

static void socket_gets_the_asked_mode(void **state)
{
	(void)state;
	struct stat st;
	assert_int_equal(stat(g.main_socket, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
	char lock[160];
	snprintf(lock, sizeof(lock), "%s.lock", g.main_socket);
	assert_int_equal(stat(lock, &st), 0);
}

struct timer_log {
	int order[8];
	int n;
};

static struct timer_log timer_log;
static int timer_labels[] = { 10, 11, 15, 20, 30 };

static void timer_fired(void *ctx)
{
	if (timer_log.n < 8)
		timer_log.order[timer_log.n++] = *(int *)ctx;
}

static void add_timers_job(void *arg)
{
	(void)arg;
	timer_log.n = 0;
	vg_grpc_loop_add_timer(g.loop, 30, timer_fired, &timer_labels[4]);
	vg_grpc_loop_add_timer(g.loop, 10, timer_fired, &timer_labels[0]);
	uint64_t cancelled = vg_grpc_loop_add_timer(g.loop, 15, timer_fired, &timer_labels[2]);
	vg_grpc_loop_add_timer(g.loop, 20, timer_fired, &timer_labels[3]);
	vg_grpc_loop_add_timer(g.loop, 10, timer_fired, &timer_labels[1]);
	vg_grpc_loop_cancel_timer(g.loop, cancelled);
}

static void read_timer_log_job(void *arg)
{
	*(struct timer_log *)arg = timer_log;
}

static void timers_fire_in_order_and_cancel(void **state)
{
	(void)state;
	run_on_loop(add_timers_job, NULL);
	struct timer_log seen = { .n = 0 };
	for (int i = 0; i < 500 && seen.n < 4; i++) {
		sleep_ms(10);
		run_on_loop(read_timer_log_job, &seen);
	}
	sleep_ms(50); /* the cancelled one would have fired by now */
	run_on_loop(read_timer_log_job, &seen);
	assert_int_equal(seen.n, 4);
	assert_int_equal(seen.order[0], 10);
	assert_int_equal(seen.order[1], 11); /* same deadline: in the order added */
	assert_int_equal(seen.order[2], 20);
	assert_int_equal(seen.order[3], 30);
}

struct fd_job {
	int fd;
	uint64_t id;
	atomic_int calls;
	atomic_int bytes;
};

static void read_one_byte(void *ctx, int fd)
{
	struct fd_job *j = ctx;
	char c;
	if (read(fd, &c, 1) == 1)
		atomic_fetch_add(&j->bytes, 1);
	atomic_fetch_add(&j->calls, 1);
}

static void read_eventfd(void *ctx, int fd)
{
	struct fd_job *j = ctx;
	uint64_t v;
	if (read(fd, &v, sizeof(v)) == sizeof(v))
		atomic_fetch_add(&j->bytes, (int)v);
	atomic_fetch_add(&j->calls, 1);
}

static void watch_pipe_job(void *arg)
{
	struct fd_job *j = arg;
	j->id = vg_grpc_loop_watch_fd(g.loop, j->fd, read_one_byte, j, NULL);
}

static void watch_eventfd_job(void *arg)
{
	struct fd_job *j = arg;
	j->id = vg_grpc_loop_watch_fd(g.loop, j->fd, read_eventfd, j, NULL);
}

static void unwatch_job(void *arg)
{
	struct fd_job *j = arg;
	vg_grpc_loop_unwatch_fd(g.loop, j->id);
}

static void *eventfd_writer_main(void *arg)
{
	struct fd_job *j = arg;
	for (int i = 0; i < 3; i++) {
		uint64_t one = 1;
		if (write(j->fd, &one, sizeof(one)) != sizeof(one))
			break;
		sleep_ms(20);
	}
	return NULL;
}

static bool wait_for(atomic_int *value, int want)
{
	for (int i = 0; i < 1000 && atomic_load(value) < want; i++)
		sleep_ms(10);
	return atomic_load(value) >= want;
}

static void fd_watches_are_level_triggered(void **state)
{
	(void)state;
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	struct fd_job pipe_job = { .fd = p[0] };
	run_on_loop(watch_pipe_job, &pipe_job);
	assert_true(pipe_job.id > 0);
	/* Three bytes at once, one read per callback: still readable, so called again. */
	assert_int_equal(write(p[1], "abc", 3), 3);
	assert_true(wait_for(&pipe_job.bytes, 3));
	sleep_ms(50);
	assert_int_equal(atomic_load(&pipe_job.bytes), 3);
	run_on_loop(unwatch_job, &pipe_job);
	int calls = atomic_load(&pipe_job.calls);
	assert_int_equal(write(p[1], "d", 1), 1);
	sleep_ms(50);
	assert_int_equal(atomic_load(&pipe_job.calls), calls); /* unwatched: silent */
	close(p[0]);
	close(p[1]);

	struct fd_job ev_job = { .fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
	assert_true(ev_job.fd >= 0);
	run_on_loop(watch_eventfd_job, &ev_job);
	pthread_t writer;
	assert_int_equal(pthread_create(&writer, NULL, eventfd_writer_main, &ev_job), 0);
	pthread_join(writer, NULL);
	assert_true(wait_for(&ev_job.bytes, 3));
	run_on_loop(unwatch_job, &ev_job);
	close(ev_job.fd);
}

struct loop_call_job {
	const char *path;
	bool wait_for_ready;
	int timeout_ms;
	int rc;
	int64_t started_ms;
	int64_t done_ms;
	atomic_bool done;
	enum vg_grpc_code code;
	char text[64];
};

static void loop_call_done(void *ctx, struct vg_grpc_reply *reply)
{
	struct loop_call_job *j = ctx;
	j->code = reply->code;
	if (reply->message != NULL)
		snprintf(j->text, sizeof(j->text), "%.*s", (int)reply->message_len,
			 (const char *)reply->message);
	vg_grpc_reply_clear(reply);
	j->done_ms = now_ms();
	atomic_store(&j->done, true);
}

static void start_registrar(void *ctx)
{
	(void)ctx;
	struct server_new_job j = { .path = g.reg_socket, .start = true };
	server_new_job(&j);
	if (j.rc == 0)
		g.reg_server = j.server;
}

static void loop_call_job(void *arg)
{
	struct loop_call_job *j = arg;
	j->started_ms = now_ms();
	j->rc = vg_grpc_loop_call(g.loop, j->path, REGISTER, (const uint8_t *)"node-1", 6,
				  j->timeout_ms, j->wait_for_ready, loop_call_done, j, NULL);
}

static void loop_call_with_late_server_job(void *arg)
{
	loop_call_job(arg);
	vg_grpc_loop_add_timer(g.loop, 300, start_registrar, NULL);
}

static void wait_done(struct loop_call_job *j)
{
	for (int i = 0; i < 3000 && !atomic_load(&j->done); i++)
		sleep_ms(10);
	assert_true(atomic_load(&j->done));
}

static void calls_out_from_the_loop(void **state)
{
	(void)state;
	/* Nothing listens yet: wait_for_ready rides it out until the server appears. */
	struct loop_call_job late = { .path = g.reg_socket, .wait_for_ready = true,
				      .timeout_ms = 20000 };
	run_on_loop(loop_call_with_late_server_job, &late);
	assert_int_equal(late.rc, 0);
	wait_done(&late);
	assert_int_equal(late.code, VG_GRPC_OK);
	assert_string_equal(late.text, "registered:node-1");
	assert_true(late.done_ms - late.started_ms >= 290);
	printf("wait_for_ready: answered %lld ms after the call, server started at 300 ms\n",
	       (long long)(late.done_ms - late.started_ms));

	struct loop_call_job again = { .path = g.reg_socket, .timeout_ms = 20000 };
	run_on_loop(loop_call_job, &again);
	wait_done(&again);
	assert_int_equal(again.code, VG_GRPC_OK);

	/* Fail fast: no socket, no waiting. */
	char missing[160];
	snprintf(missing, sizeof(missing), "%s/nobody.sock", g.dir);
	struct loop_call_job none = { .path = missing, .timeout_ms = 20000 };
	run_on_loop(loop_call_job, &none);
	wait_done(&none);
	assert_int_equal(none.code, VG_GRPC_UNAVAILABLE);
	assert_true(none.done_ms - none.started_ms < 10000);
}

static void shutdown_job(void *arg)
{
	(void)arg;
	vg_grpc_server_shutdown(g.reg_server);
	g.reg_server = NULL;
}

static bool path_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static void one_server_restarts_while_the_loop_runs(void **state)
{
	(void)state;
	char lock[160];
	snprintf(lock, sizeof(lock), "%s.lock", g.reg_socket);
	assert_true(path_exists(g.reg_socket));
	run_on_loop(shutdown_job, NULL);
	for (int i = 0; i < 500 && (path_exists(g.reg_socket) || path_exists(lock)); i++)
		sleep_ms(10);
	assert_false(path_exists(g.reg_socket));
	assert_false(path_exists(lock));

	run_on_loop(start_registrar, NULL);
	struct vg_grpc_reply reply;
	struct vg_error *err = NULL;
	assert_int_equal(vg_grpc_call_blocking(g.reg_socket, REGISTER, (const uint8_t *)"n2", 2,
					       20000, &reply, &err),
			 0);
	assert_int_equal(reply.code, VG_GRPC_OK);
	assert_memory_equal(reply.message, "registered:n2", reply.message_len);
	vg_grpc_reply_clear(&reply);
}

struct held_query {
	size_t index;
	size_t n_held;
	bool cancelled;
	bool reply;
};

static void held_query_job(void *arg)
{
	struct held_query *q = arg;
	q->n_held = g.n_held;
	if (q->index < g.n_held) {
		q->cancelled = vg_grpc_call_cancelled(g.held[q->index]);
		if (q->reply) { /* too late: must be dropped quietly */
			vg_grpc_call_reply(g.held[q->index], (const uint8_t *)"late", 4);
			g.held[q->index] = NULL;
		}
	}
}

struct never_call {
	int timeout_ms;
	enum vg_grpc_code code;
	int rc;
};

static void *never_call_main(void *arg)
{
	struct never_call *c = arg;
	struct vg_grpc_reply reply;
	c->rc = vg_grpc_call_blocking(g.main_socket, SVC "Never", (const uint8_t *)"?", 1,
				      c->timeout_ms, &reply, NULL);
	c->code = reply.code;
	vg_grpc_reply_clear(&reply);
	return NULL;
}

static void wait_held(size_t count)
{
	struct held_query q = { .index = 99 };
	for (int i = 0; i < 1000; i++) {
		run_on_loop(held_query_job, &q);
		if (q.n_held >= count)
			return;
		sleep_ms(10);
	}
	fail_msg("the Never handler did not get call %zu", count);
}

static void deferred_call_sees_its_client_leave(void **state)
{
	(void)state;
	size_t index = g.n_held;
	struct never_call c = { .timeout_ms = 3000 };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, never_call_main, &c), 0);
	wait_held(index + 1);
	struct held_query q = { .index = index };
	run_on_loop(held_query_job, &q);
	assert_false(q.cancelled);
	pthread_join(t, NULL);
	assert_int_equal(c.rc, 0);
	assert_int_equal(c.code, VG_GRPC_DEADLINE_EXCEEDED);
	for (int i = 0; i < 200 && !q.cancelled; i++) {
		sleep_ms(10);
		run_on_loop(held_query_job, &q);
	}
	assert_true(q.cancelled);
	q.reply = true;
	run_on_loop(held_query_job, &q);
}

static void unary_latency(void **state)
{
	(void)state;
	struct vg_grpc_client *client = NULL;
	assert_int_equal(vg_grpc_client_new(g.main_socket, &client, NULL), 0);
	enum { MAX_CALLS = 3000 };
	static int64_t us[MAX_CALLS];
	int n = 0;
	/* A time budget rather than a count, so the valgrind run stays short. */
	int64_t start = now_ms();
	for (int i = 0; i < MAX_CALLS + 200 && now_ms() - start < 3000; i++) {
		struct timespec a, b;
		struct vg_grpc_reply reply;
		clock_gettime(CLOCK_MONOTONIC, &a);
		assert_int_equal(vg_grpc_client_call(client, SVC "Echo", (const uint8_t *)"0123456789",
						     10, 5000, &reply, NULL),
				 0);
		clock_gettime(CLOCK_MONOTONIC, &b);
		assert_int_equal(reply.code, VG_GRPC_OK);
		vg_grpc_reply_clear(&reply);
		if (i >= 200 && n < MAX_CALLS) /* after a warm-up */
			us[n++] = (b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000;
	}
	vg_grpc_client_free(client);
	if (n < 10)
		return;
	for (int i = 1; i < n; i++) /* insertion sort: a few thousand values */
		for (int k = i; k > 0 && us[k - 1] > us[k]; k--) {
			int64_t t = us[k];
			us[k] = us[k - 1];
			us[k - 1] = t;
		}
	printf("unary Echo over one channel: %d calls, p50 %lld us, p99 %lld us\n", n,
	       (long long)us[n / 2], (long long)us[n * 99 / 100]);

	/* What vmgpuctl pays: a fresh channel and completion queue per call. */
	int64_t t0 = now_ms();
	int fresh = 0;
	while (fresh < 50 && now_ms() - t0 < 3000) {
		struct vg_grpc_reply reply;
		call_ok(SVC "Echo", (const uint8_t *)"x", 1, &reply);
		vg_grpc_reply_clear(&reply);
		fresh++;
	}
	printf("vg_grpc_call_blocking with a fresh channel: %d calls, mean %.2f ms\n", fresh,
	       (double)(now_ms() - t0) / fresh);
}

/* A second loop in the same process, freed without ever running: its started server is still
 * shut down in order and its socket and lock are gone afterwards. */
static void loop_freed_without_running_cleans_up(void **state)
{
	(void)state;
	char dir[64];
	snprintf(dir, sizeof(dir), "/tmp/vg-grpc-idle-XXXXXX");
	assert_non_null(mkdtemp(dir));
	char path[128], lock[160];
	snprintf(path, sizeof(path), "%s/idle.sock", dir);
	snprintf(lock, sizeof(lock), "%s.lock", path);
	struct vg_grpc_loop *loop = NULL;
	struct vg_grpc_server *server = NULL;
	struct vg_error *err = NULL;
	assert_int_equal(vg_grpc_loop_new(&loop, &err), 0);
	assert_int_equal(vg_grpc_server_new(loop, path, 0660, &server, &err), 0);
	assert_int_equal(vg_grpc_server_add_unary(server, SVC "Echo", echo, NULL, &err), 0);
	assert_int_equal(vg_grpc_server_start(server, &err), 0);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0660);
	vg_grpc_loop_free(loop);
	assert_false(path_exists(path));
	assert_false(path_exists(lock));
	assert_int_equal(rmdir(dir), 0);
}

static void *hold_stream_main(void *arg)
{
	struct vg_grpc_reply *status = arg;
	struct received r = { .n = 0 };
	vg_grpc_stream_blocking(g.main_socket, SVC "Hold", (const uint8_t *)"", 0, 30000, collect,
				&r, status, NULL);
	return NULL;
}

static void stop_ends_open_streams_and_unanswered_calls(void **state)
{
	(void)state;
	int open_before = atomic_load(&g.hold_open);
	struct vg_grpc_reply stream_status;
	pthread_t stream_thread, never_thread;
	assert_int_equal(pthread_create(&stream_thread, NULL, hold_stream_main, &stream_status),
			 0);
	size_t held_before = g.n_held;
	struct never_call c = { .timeout_ms = 30000 };
	assert_int_equal(pthread_create(&never_thread, NULL, never_call_main, &c), 0);
	assert_true(wait_for(&g.hold_open, open_before + 1));
	wait_held(held_before + 1);

	int64_t start = now_ms();
	stop_loop();
	pthread_join(stream_thread, NULL);
	pthread_join(never_thread, NULL);
	printf("stop with an open stream and an unanswered call took %lld ms\n",
	       (long long)(now_ms() - start));
	assert_int_equal(g.loop_run_rc, 0);
	assert_int_equal(stream_status.code, VG_GRPC_UNAVAILABLE);
	vg_grpc_reply_clear(&stream_status);
	assert_int_equal(c.rc, 0);
	assert_true(c.code == VG_GRPC_UNAVAILABLE || c.code == VG_GRPC_CANCELLED);
	assert_int_equal(atomic_load(&g.hold_closed), atomic_load(&g.hold_open));
	assert_false(path_exists(g.main_socket));
	assert_false(path_exists(g.reg_socket));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(echoes_bytes_exactly),
		cmocka_unit_test(answers_later_from_a_timer),
		cmocka_unit_test(fails_with_code_and_message),
		cmocka_unit_test(unknown_method_is_unimplemented_at_once),
		cmocka_unit_test(streams_three_snapshots),
		cmocka_unit_test(newer_snapshot_replaces_unsent_one),
		cmocka_unit_test(client_leaving_a_stream_is_seen),
		cmocka_unit_test(second_server_on_same_path_is_refused),
		cmocka_unit_test(unsafe_socket_directories_are_refused),
		cmocka_unit_test(socket_gets_the_asked_mode),
		cmocka_unit_test(timers_fire_in_order_and_cancel),
		cmocka_unit_test(fd_watches_are_level_triggered),
		cmocka_unit_test(calls_out_from_the_loop),
		cmocka_unit_test(one_server_restarts_while_the_loop_runs),
		cmocka_unit_test(deferred_call_sees_its_client_leave),
		cmocka_unit_test(unary_latency),
		cmocka_unit_test(loop_freed_without_running_cleans_up),
		cmocka_unit_test(stop_ends_open_streams_and_unanswered_calls),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

#include "agent/allocator.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/cleanup.h"
#include "lib/error.h"

/* How many reasons or names a message lists before it says "and N more". */
#define LIST_MAX 8
/* How much of one reason a message keeps. */
#define REASON_MAX 160

/* ---- the selector ---- */

static bool value_matches(enum vg_selector_key key, const struct vg_selector_value *v,
			  const struct vg_alloc_device *dev)
{
	switch (key) {
	case VG_SEL_PRODUCT:
		return dev->name != NULL && strcasestr(dev->name, v->text) != NULL;
	case VG_SEL_VENDOR:
		return dev->vendor_id == v->number;
	case VG_SEL_DEVICE:
		return dev->device_id == v->number;
	case VG_SEL_NUMA:
		return dev->numa_node == v->number;
	case VG_SEL_PCIE_ROOT:
		return dev->pcie_root != NULL && strcasecmp(dev->pcie_root, v->text) == 0;
	}
	return false;
}

bool vg_selector_matches(const struct vg_selector *sel, const struct vg_alloc_device *dev)
{
	for (size_t i = 0; i < sel->n_terms; i++) {
		const struct vg_selector_term *t = &sel->terms[i];
		bool any = false;
		for (size_t j = 0; j < t->n_values && !any; j++)
			any = value_matches(t->key, &t->values[j], dev);
		if (any == (t->op == VG_SEL_NE))
			return false;
	}
	return true;
}

/* ---- topology: the set that spans the fewest NUMA nodes, then roots, then lowest indexes ----
 *
 * Devices fall into NUMA groups (one per numa_node value, -1 included) and root groups (one per
 * NUMA group and pcie_root, "" included), so every root group lies in one NUMA group. A set's
 * cost is (NUMA groups it touches, root groups it touches, its positions in ascending order),
 * compared in that order. The chooser first finds the least (NUMA, root) pair any completion can
 * reach, then builds the set one position at a time, taking the lowest position that still
 * admits a completion of that cost. Whether one exists is a small knapsack over the groups: take
 * whole roots, fullest first, within a budget of new NUMA groups and new roots. */

struct chooser {
	const bool *pool; /* positions that may be added */
	size_t n; /* positions in the table */
	size_t *numa_of, *root_of; /* group of each position; SIZE_MAX outside pool and fixed */
	size_t *root_numa; /* NUMA group of each root group */
	size_t n_numa, n_roots;
	size_t *numa_refs, *root_refs; /* members of the set so far, per group */
	size_t numa_used, roots_used; /* groups with refs > 0 */
	long *cap, *sorted, *dp, *next; /* scratch */
};

static void chooser_free(struct chooser *c)
{
	free(c->numa_of);
	free(c->root_of);
	free(c->root_numa);
	free(c->numa_refs);
	free(c->root_refs);
	free(c->cap);
	free(c->sorted);
	free(c->dp);
	free(c->next);
}

static void chooser_add(struct chooser *c, size_t pos)
{
	if (c->numa_refs[c->numa_of[pos]]++ == 0)
		c->numa_used++;
	if (c->root_refs[c->root_of[pos]]++ == 0)
		c->roots_used++;
}

static void chooser_remove(struct chooser *c, size_t pos)
{
	if (--c->numa_refs[c->numa_of[pos]] == 0)
		c->numa_used--;
	if (--c->root_refs[c->root_of[pos]] == 0)
		c->roots_used--;
}

static int chooser_init(struct chooser *c, const struct vg_alloc_device *devs, size_t n,
			const bool *pool, const bool *fixed, struct vg_error **err)
{
	size_t slots = n + 1;
	c->pool = pool;
	c->n = n;
	c->numa_of = calloc(slots, sizeof(size_t));
	c->root_of = calloc(slots, sizeof(size_t));
	c->root_numa = calloc(slots, sizeof(size_t));
	c->numa_refs = calloc(slots, sizeof(size_t));
	c->root_refs = calloc(slots, sizeof(size_t));
	c->cap = calloc(slots, sizeof(long));
	c->sorted = calloc(slots, sizeof(long));
	c->dp = calloc(slots * slots, sizeof(long));
	c->next = calloc(slots * slots, sizeof(long));
	if (!c->numa_of || !c->root_of || !c->root_numa || !c->numa_refs || !c->root_refs ||
	    !c->cap || !c->sorted || !c->dp || !c->next)
		return vg_error_set(err, ENOMEM, "choosing GPUs: out of memory");
	for (size_t i = 0; i < n; i++) {
		c->numa_of[i] = c->root_of[i] = SIZE_MAX;
		if (!pool[i] && !(fixed && fixed[i]))
			continue;
		size_t g = c->n_numa;
		for (size_t j = 0; j < i && g == c->n_numa; j++)
			if (c->numa_of[j] != SIZE_MAX && devs[j].numa_node == devs[i].numa_node)
				g = c->numa_of[j];
		if (g == c->n_numa)
			c->n_numa++;
		c->numa_of[i] = g;
		const char *root = devs[i].pcie_root ? devs[i].pcie_root : "";
		size_t q = c->n_roots;
		for (size_t j = 0; j < i && q == c->n_roots; j++)
			if (c->root_of[j] != SIZE_MAX && c->numa_of[j] == g &&
			    strcmp(devs[j].pcie_root ? devs[j].pcie_root : "", root) == 0)
				q = c->root_of[j];
		if (q == c->n_roots)
			c->root_numa[c->n_roots++] = g;
		c->root_of[i] = q;
	}
	for (size_t i = 0; i < n; i++)
		if (fixed && fixed[i])
			chooser_add(c, i);
	return 0;
}

static int compare_long_desc(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;
	return (x < y) - (x > y);
}

/* Can `need` more devices from the pool at positions >= start join the set so that the whole
 * touches at most m NUMA groups and r root groups? */
static bool chooser_feasible(struct chooser *c, size_t start, size_t need, size_t m, size_t r)
{
	if (c->numa_used > m || c->roots_used > r)
		return false;
	if (need == 0)
		return true;
	size_t bn = m - c->numa_used, br = r - c->roots_used, w = br + 1;
	memset(c->cap, 0, c->n_roots * sizeof(long));
	for (size_t i = start; i < c->n; i++)
		if (c->pool[i])
			c->cap[c->root_of[i]]++;
	long have = 0; /* room in roots the set already touches costs nothing */
	for (size_t q = 0; q < c->n_roots; q++)
		if (c->root_refs[q] > 0)
			have += c->cap[q];
	if (have >= (long)need)
		return true;
	for (size_t i = 0; i < (bn + 1) * w; i++)
		c->dp[i] = -1;
	c->dp[0] = 0;
	for (size_t g = 0; g < c->n_numa; g++) {
		size_t k = 0;
		for (size_t q = 0; q < c->n_roots; q++)
			if (c->root_numa[q] == g && c->root_refs[q] == 0 && c->cap[q] > 0)
				c->sorted[k++] = c->cap[q];
		if (k == 0)
			continue;
		qsort(c->sorted, k, sizeof(long), compare_long_desc);
		size_t numa_cost = c->numa_refs[g] > 0 ? 0 : 1;
		memcpy(c->next, c->dp, (bn + 1) * w * sizeof(long));
		for (size_t a = 0; a + numa_cost <= bn; a++) {
			for (size_t b = 0; b < br; b++) {
				long base = c->dp[a * w + b], gain = 0;
				if (base < 0)
					continue;
				for (size_t j = 1; j <= k && b + j <= br; j++) {
					gain += c->sorted[j - 1];
					long *slot = &c->next[(a + numa_cost) * w + b + j];
					if (base + gain > *slot)
						*slot = base + gain;
				}
			}
		}
		long *tmp = c->dp;
		c->dp = c->next;
		c->next = tmp;
	}
	long best = 0;
	for (size_t i = 0; i < (bn + 1) * w; i++)
		if (c->dp[i] > best)
			best = c->dp[i];
	return have + best >= (long)need;
}

/* Adds k pool positions to the fixed ones; writes the added positions, ascending, to out. */
static int choose(const struct vg_alloc_device *devs, size_t n, const bool *pool, const bool *fixed,
		  size_t k, size_t *out, struct vg_error **err)
{
	struct chooser c = { 0 };
	int r = chooser_init(&c, devs, n, pool, fixed, err);
	if (r < 0) {
		chooser_free(&c);
		return r;
	}
	size_t best_m = SIZE_MAX, best_r = SIZE_MAX;
	for (size_t m = c.numa_used; m <= c.n_numa && best_m == SIZE_MAX; m++) {
		if (!chooser_feasible(&c, 0, k, m, c.n_roots))
			continue;
		best_m = m;
		for (size_t q = c.roots_used; q <= c.n_roots && best_r == SIZE_MAX; q++)
			if (chooser_feasible(&c, 0, k, m, q))
				best_r = q;
	}
	size_t start = 0, taken = 0;
	while (best_r != SIZE_MAX && taken < k) {
		size_t pos = n;
		for (size_t i = start; i < n && pos == n; i++) {
			if (!pool[i])
				continue;
			chooser_add(&c, i);
			if (chooser_feasible(&c, i + 1, k - taken - 1, best_m, best_r))
				pos = i;
			else
				chooser_remove(&c, i);
		}
		if (pos == n)
			break;
		out[taken++] = pos;
		start = pos + 1;
	}
	chooser_free(&c);
	if (taken < k) /* the callers count the pool first, so this is a bug */
		return vg_error_set(err, EIO, "choosing %zu GPUs: no set found", k);
	return 0;
}

/* ---- messages ---- */

static FILE *message_open(char **text, size_t *len)
{
	*text = NULL;
	*len = 0;
	return open_memstream(text, len);
}

/* Closes the stream, which sets *text; returns the text or NULL (out of memory). */
static char *message_close(FILE *f, char **text)
{
	bool failed = ferror(f) != 0;
	if (fclose(f) != 0 || failed) {
		free(*text);
		return NULL;
	}
	return *text;
}

/* "0000:18:00.0: allocated to sandbox web-1; ..." for the devices in `which` that are busy. */
static void write_reasons(FILE *f, const struct vg_alloc_device *devs, size_t n, const bool *which)
{
	size_t listed = 0, more = 0;
	for (size_t i = 0; i < n; i++) {
		if (!which[i] || devs[i].free)
			continue;
		if (listed == LIST_MAX) {
			more++;
			continue;
		}
		fprintf(f, "%s%s: %.*s", listed ? "; " : "", devs[i].bdf, REASON_MAX,
			devs[i].why_not_free ? devs[i].why_not_free : "not available");
		listed++;
	}
	if (more > 0)
		fprintf(f, "; and %zu more", more);
}

static int fail_no_space(struct vg_error **err, const struct vg_alloc_device *devs, size_t n,
			 const bool *considered, size_t n_considered, size_t n_free,
			 const struct vg_gpu_request *req)
{
	char *text;
	size_t len;
	FILE *f = message_open(&text, &len);
	if (f == NULL)
		return vg_error_set(err, ENOSPC, "requested %u GPUs: not enough available", req->count);
	fprintf(f, "requested %u GPU%s", req->count, req->count == 1 ? "" : "s");
	if (req->kind == VG_REQ_SELECTOR) {
		fprintf(f, " matching '%s' but only %zu of the %zu matching GPU%s %s available",
			req->selector.text, n_free, n_considered, n_considered == 1 ? "" : "s",
			n_free == 1 ? "is" : "are");
		if (n_considered > n_free) {
			fputs(" (reasons for the others: ", f);
			write_reasons(f, devs, n, considered);
			fputc(')', f);
		}
	} else if (n == 0) {
		fputs(" but this node has no GPUs", f);
	} else {
		fprintf(f, " but only %zu %s available (%zu total", n_free, n_free == 1 ? "is" : "are",
			n);
		if (n > n_free) {
			fputs("; reasons for the others: ", f);
			write_reasons(f, devs, n, considered);
		}
		fputc(')', f);
	}
	cleanup_free char *msg = message_close(f, &text);
	return vg_error_set(err, ENOSPC, "%s", msg ? msg : "not enough GPUs available");
}

static int fail_no_match(struct vg_error **err, const struct vg_alloc_device *devs, size_t n,
			 const struct vg_selector *sel)
{
	if (n == 0)
		return vg_error_set(err, ENOENT, "no GPU matches '%s' (this node has no GPUs)",
				    sel->text);
	char *text;
	size_t len;
	FILE *f = message_open(&text, &len);
	if (f == NULL)
		return vg_error_set(err, ENOENT, "no GPU matches '%s'", sel->text);
	fprintf(f, "no GPU matches '%s' (this node has %zu GPU%s:", sel->text, n, n == 1 ? "" : "s");
	size_t listed = 0, more = 0;
	for (size_t i = 0; i < n; i++) {
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++)
			seen = strcmp(devs[j].name ? devs[j].name : "", devs[i].name ? devs[i].name : "") == 0;
		if (seen)
			continue;
		if (listed == 4) {
			more++;
			continue;
		}
		size_t same = 0;
		for (size_t j = i; j < n; j++)
			same += strcmp(devs[j].name ? devs[j].name : "",
				       devs[i].name ? devs[i].name : "") == 0;
		fprintf(f, "%s %zu x %s (vendor %04x, device %04x)", listed ? "," : "", same,
			devs[i].name && devs[i].name[0] ? devs[i].name : "unnamed", devs[i].vendor_id,
			devs[i].device_id);
		listed++;
	}
	if (more > 0)
		fprintf(f, ", and %zu more products", more);
	fputc(')', f);
	cleanup_free char *msg = message_close(f, &text);
	return vg_error_set(err, ENOENT, "%s", msg ? msg : "no GPU matches the selector");
}

/* What a missing item could have been: the node's indexes as ranges, or its BDFs. */
static int fail_unknown_device(struct vg_error **err, const struct vg_alloc_device *devs, size_t n,
			       const struct vg_gpu_ref *ref)
{
	if (n == 0)
		return vg_error_set(err, ENOENT, "no GPU %s on this node (it has no GPUs)", ref->text);
	char *text;
	size_t len;
	FILE *f = message_open(&text, &len);
	if (f == NULL)
		return vg_error_set(err, ENOENT, "no GPU %s on this node", ref->text);
	fprintf(f, "no GPU %s on this node (known: ", ref->text);
	if (ref->is_index) {
		for (size_t i = 0; i < n;) {
			size_t j = i;
			while (j + 1 < n && devs[j + 1].index == devs[j].index + 1)
				j++;
			fprintf(f, "%s%d", i ? ", " : "", devs[i].index);
			if (j > i)
				fprintf(f, "-%d", devs[j].index);
			i = j + 1;
		}
	} else {
		for (size_t i = 0; i < n && i < LIST_MAX; i++)
			fprintf(f, "%s%s", i ? ", " : "", devs[i].bdf);
		if (n > LIST_MAX)
			fprintf(f, ", and %zu more", n - LIST_MAX);
	}
	fputc(')', f);
	cleanup_free char *msg = message_close(f, &text);
	return vg_error_set(err, ENOENT, "%s", msg ? msg : "no such GPU on this node");
}

/* ---- requests ---- */

static size_t find_ref(const struct vg_alloc_device *devs, size_t n, const struct vg_gpu_ref *ref)
{
	for (size_t i = 0; i < n; i++) {
		if (ref->is_index ? devs[i].index >= 0 && (unsigned)devs[i].index == ref->index
				  : devs[i].bdf != NULL && strcasecmp(devs[i].bdf, ref->text) == 0)
			return i;
	}
	return SIZE_MAX;
}

static int allocate_devices(const struct vg_alloc_device *devs, size_t n,
			    const struct vg_gpu_request *req, size_t *out, struct vg_error **err)
{
	for (size_t i = 0; i < req->n_devices; i++) {
		const struct vg_gpu_ref *ref = &req->devices[i];
		out[i] = find_ref(devs, n, ref);
		if (out[i] == SIZE_MAX)
			return fail_unknown_device(err, devs, n, ref);
		for (size_t j = 0; j < i; j++)
			if (out[j] == out[i])
				return vg_error_set(err, EINVAL,
						    VG_ANNOTATION_PREFIX "gpu-devices: items %s and %s "
									 "both name GPU %s (index %d)",
						    req->devices[j].text, ref->text, devs[out[i]].bdf,
						    devs[out[i]].index);
	}
	for (size_t i = 0; i < req->n_devices; i++) {
		const struct vg_alloc_device *d = &devs[out[i]];
		if (!d->free)
			return vg_error_set(err, EBUSY, "GPU %s (index %d) is not available: %.*s",
					    d->bdf, d->index, REASON_MAX,
					    d->why_not_free ? d->why_not_free : "in use");
	}
	return 0;
}

static int compare_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return (x > y) - (x < y);
}

int vg_allocate(const struct vg_alloc_device *devices, size_t n_devices,
		const struct vg_gpu_request *req, size_t *chosen, size_t *n_chosen,
		struct vg_error **err)
{
	size_t picked[VG_REQ_MAX_GPUS];
	size_t n_picked = 0;
	if (req->kind == VG_REQ_NONE || (req->kind != VG_REQ_DEVICES && req->count == 0)) {
		*n_chosen = 0;
		return 0;
	}
	if (req->count > VG_REQ_MAX_GPUS || req->n_devices > VG_REQ_MAX_GPUS)
		return vg_error_set(err, EINVAL, "requested %u GPUs; at most %d fit one sandbox",
				    req->count, VG_REQ_MAX_GPUS);
	if (req->kind == VG_REQ_DEVICES) {
		int r = allocate_devices(devices, n_devices, req, picked, err);
		if (r < 0)
			return r;
		n_picked = req->n_devices;
	} else {
		cleanup_free bool *considered = calloc(n_devices + 1, sizeof(bool));
		cleanup_free bool *pool = calloc(n_devices + 1, sizeof(bool));
		if (considered == NULL || pool == NULL)
			return vg_error_set(err, ENOMEM, "allocating GPUs: out of memory");
		size_t n_considered = 0, n_free = 0;
		for (size_t i = 0; i < n_devices; i++) {
			considered[i] = req->kind != VG_REQ_SELECTOR ||
					vg_selector_matches(&req->selector, &devices[i]);
			pool[i] = considered[i] && devices[i].free;
			n_considered += considered[i];
			n_free += pool[i];
		}
		if (req->kind == VG_REQ_SELECTOR && n_considered == 0)
			return fail_no_match(err, devices, n_devices, &req->selector);
		if (n_free < req->count)
			return fail_no_space(err, devices, n_devices, considered, n_considered, n_free,
					     req);
		int r = choose(devices, n_devices, pool, NULL, req->count, picked, err);
		if (r < 0)
			return r;
		n_picked = req->count;
	}
	qsort(picked, n_picked, sizeof(size_t), compare_size);
	memcpy(chosen, picked, n_picked * sizeof(size_t));
	*n_chosen = n_picked;
	return 0;
}

/* ---- the kubelet's GetPreferredAllocation ---- */

#define PREFER "preferred allocation: "

static size_t find_id(const struct vg_alloc_device *devs, size_t n, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (devs[i].bdf != NULL && id != NULL && strcasecmp(devs[i].bdf, id) == 0)
			return i;
	return SIZE_MAX;
}

int vg_prefer_allocation(const struct vg_alloc_device *devices, size_t n_devices,
			 const char *const *available, size_t n_available,
			 const char *const *must_include, size_t n_must, size_t size, size_t *chosen,
			 size_t *n_chosen, struct vg_error **err)
{
	if (n_must > size)
		return vg_error_set(err, EINVAL,
				    PREFER "must_include lists %zu devices but the allocation size is "
					   "%zu",
				    n_must, size);
	if (size > n_available)
		return vg_error_set(err, EINVAL,
				    PREFER "allocation size %zu exceeds the %zu available device%s",
				    size, n_available, n_available == 1 ? "" : "s");
	cleanup_free bool *pool = calloc(n_devices + 1, sizeof(bool));
	cleanup_free bool *fixed = calloc(n_devices + 1, sizeof(bool));
	cleanup_free size_t *picked = calloc(size + 1, sizeof(size_t));
	if (pool == NULL || fixed == NULL || picked == NULL)
		return vg_error_set(err, ENOMEM, PREFER "out of memory");
	for (size_t i = 0; i < n_available; i++) {
		size_t pos = find_id(devices, n_devices, available[i]);
		if (pos == SIZE_MAX)
			return vg_error_set(err, EINVAL,
					    PREFER "available device %.64s is not a GPU on this node",
					    available[i] ? available[i] : "(null)");
		if (pool[pos])
			return vg_error_set(err, EINVAL,
					    PREFER "available device %s is listed twice",
					    devices[pos].bdf);
		pool[pos] = true;
	}
	for (size_t i = 0; i < n_must; i++) {
		size_t pos = find_id(devices, n_devices, must_include[i]);
		if (pos == SIZE_MAX)
			return vg_error_set(err, EINVAL,
					    PREFER "must_include device %.64s is not a GPU on this node",
					    must_include[i] ? must_include[i] : "(null)");
		if (fixed[pos])
			return vg_error_set(err, EINVAL,
					    PREFER "must_include device %s is listed twice",
					    devices[pos].bdf);
		if (!pool[pos])
			return vg_error_set(err, EINVAL,
					    PREFER "must_include device %s is not among the available "
						   "devices",
					    devices[pos].bdf);
		fixed[pos] = true;
		pool[pos] = false;
		picked[i] = pos;
	}
	if (size > n_must) {
		int r = choose(devices, n_devices, pool, fixed, size - n_must, picked + n_must, err);
		if (r < 0)
			return r;
	}
	qsort(picked, size, sizeof(size_t), compare_size);
	memcpy(chosen, picked, size * sizeof(size_t));
	*n_chosen = size;
	return 0;
}

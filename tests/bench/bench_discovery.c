/* Discovery time of the GPU inventory on a fixture tree; prints numbers, asserts nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/error.h"
#include "lib/gpu_filter.h"
#include "lib/gpu_state.h"
#include "lib/inventory.h"
#include "lib/sysfs.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int compare_doubles(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int scan_once(struct vg_pci_scanner *scanner, const struct vg_gpu_filter *filter,
		     size_t *n_gpus, size_t *n_functions)
{
	struct vg_error *err = NULL;
	struct vg_inventory *inventory = NULL;
	if (vg_inventory_scan(scanner, filter, &inventory, &err) < 0) {
		fprintf(stderr, "bench: %s\n", err->msg);
		vg_error_free(err);
		return -1;
	}
	struct vg_gpu_policy policy = { .vfio_pci_usable = true };
	vg_inventory_classify(inventory, &policy);
	*n_gpus = inventory->n_gpus;
	*n_functions = inventory->n_functions;
	vg_inventory_free(inventory);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s SYSFS_ROOT [ITERATIONS]\n", argv[0]);
		return 2;
	}
	int iterations = argc > 2 ? atoi(argv[2]) : 200;
	if (iterations < 1)
		iterations = 1;
	struct vg_error *err = NULL;
	struct vg_sysfs sysfs;
	struct vg_gpu_filter filter;
	vg_gpu_filter_default(&filter);
	if (vg_sysfs_init(&sysfs, argv[1], &err) < 0) {
		fprintf(stderr, "bench: %s\n", err->msg);
		return 1;
	}

	/* Cold: a new scanner parses pci.ids on its first name lookup, as the agent does once. */
	double start = now_ms();
	struct vg_pci_scanner *scanner = NULL;
	size_t n_gpus = 0, n_functions = 0;
	if (vg_pci_scanner_new(&sysfs, NULL, &scanner, &err) < 0 ||
	    scan_once(scanner, &filter, &n_gpus, &n_functions) < 0)
		return 1;
	double cold = now_ms() - start;

	double *samples = calloc((size_t)iterations, sizeof(*samples));
	for (int i = 0; i < iterations; i++) {
		start = now_ms();
		if (scan_once(scanner, &filter, &n_gpus, &n_functions) < 0)
			return 1;
		samples[i] = now_ms() - start;
	}
	qsort(samples, (size_t)iterations, sizeof(*samples), compare_doubles);
	printf("discovery: %zu PCI functions, %zu GPUs, %d warm runs\n", n_functions, n_gpus,
	       iterations);
	printf("  cold (first scan, pci.ids parsed): %.3f ms\n", cold);
	printf("  warm median: %.3f ms  p90: %.3f ms  min: %.3f ms  max: %.3f ms\n",
	       samples[iterations / 2], samples[(iterations * 9) / 10], samples[0],
	       samples[iterations - 1]);
	free(samples);
	vg_pci_scanner_free(scanner);
	return 0;
}

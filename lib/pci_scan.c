#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/gpu_filter.h"
#include "lib/log.h"
#include "lib/pci_scan-priv.h"

/*
 * libpci reports errors through a callback that must not return. We turn such an error into
 * a vg_error by jumping back to the scan that called into libpci; the buffer is per thread.
 */
static __thread jmp_buf *libpci_escape;
static __thread char libpci_message[256];

static void __attribute__((noreturn)) on_libpci_error(char *msg, ...)
{
	va_list ap;
	va_start(ap, msg);
	vsnprintf(libpci_message, sizeof(libpci_message), msg, ap);
	va_end(ap);
	if (libpci_escape != NULL)
		longjmp(*libpci_escape, 1);
	vg_err("libpci: %s", libpci_message);
	abort();
}

static void on_libpci_warning(char *msg, ...)
{
	char text[256];
	va_list ap;
	va_start(ap, msg);
	vsnprintf(text, sizeof(text), msg, ap);
	va_end(ap);
	vg_debug("libpci: %s", text);
}

static void on_libpci_debug(char *msg, ...)
{
	(void)msg;
}

static struct pci_access *new_access(void)
{
	struct pci_access *acc = pci_alloc();
	if (acc == NULL)
		return NULL;
	acc->error = on_libpci_error;
	acc->warning = on_libpci_warning;
	acc->debug = on_libpci_debug;
	acc->method = PCI_ACCESS_SYS_BUS_PCI;
	return acc;
}

int vg_pci_scanner_new(const struct vg_sysfs *sysfs, const char *pci_ids_path,
		       struct vg_pci_scanner **out, struct vg_error **err)
{
	cleanup_free struct vg_pci_scanner *scanner = calloc(1, sizeof(*scanner));
	if (scanner == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	scanner->sysfs = *sysfs;
	int ret = vg_sysfs_path(sysfs, scanner->bus_path, sizeof(scanner->bus_path), err,
				"bus/pci");
	if (ret < 0)
		return ret;
	scanner->names = new_access();
	if (scanner->names == NULL)
		return vg_error_set(err, ENOMEM, "libpci: cannot allocate an access handle");
	if (pci_ids_path != NULL && pci_ids_path[0] != '\0') {
		if (access(pci_ids_path, R_OK) < 0) {
			int saved = errno;
			pci_cleanup(scanner->names);
			return vg_error_set_errno(err, saved, "pci.ids database %s", pci_ids_path);
		}
		pci_set_name_list_path(scanner->names, (char *)pci_ids_path, 0);
	}
	*out = TAKE_PTR(scanner);
	return 0;
}

void vg_pci_scanner_free(struct vg_pci_scanner *scanner)
{
	if (scanner == NULL)
		return;
	if (scanner->names != NULL)
		pci_cleanup(scanner->names);
	free(scanner);
}

static int compare_entries(const void *a, const void *b)
{
	const struct vg_scan_entry *ea = a, *eb = b;
	return vg_bdf_compare(&ea->fn.addr, &eb->fn.addr);
}

static void copy_name(char *dst, size_t size, const char *src)
{
	snprintf(dst, size, "%s", src ? src : "");
}

static void fill_gpu_details(struct pci_dev *dev, struct vg_scan_entry *entry)
{
	pci_fill_info(dev, PCI_FILL_NUMA_NODE | PCI_FILL_SIZES | PCI_FILL_SUBSYS |
				   PCI_FILL_IOMMU_GROUP | PCI_FILL_DRIVER | PCI_FILL_CLASS_EXT);
	entry->fn.class_code = ((uint32_t)dev->device_class << 8) | dev->prog_if;
	entry->numa_node = dev->numa_node < 0 ? -1 : dev->numa_node;
	entry->subsys_vendor_id = dev->subsys_vendor_id;
	entry->subsys_device_id = dev->subsys_id;
	for (int i = 0; i < VG_BAR_COUNT; i++)
		entry->bar_sizes[i] = (uint64_t)dev->size[i];
	const char *group = pci_get_string_property(dev, PCI_FILL_IOMMU_GROUP);
	entry->iommu_group = group ? atoi(group) : -1;
	copy_name(entry->fn.driver, sizeof(entry->fn.driver),
		  pci_get_string_property(dev, PCI_FILL_DRIVER));
	entry->details_read = true;
}

/* Everything that calls into libpci happens here, under the error escape. */
static int read_bus(struct vg_pci_scanner *scanner, const struct vg_gpu_filter *filter,
		    struct vg_scan_table *table, struct pci_access **bus, struct vg_error **err)
{
	jmp_buf escape;
	if (setjmp(escape) != 0) {
		libpci_escape = NULL;
		return vg_error_set(err, EIO, "libpci: %s", libpci_message);
	}
	libpci_escape = &escape;
	/* libpci takes non-const strings but does not modify them. */
	pci_set_param(*bus, (char *)"sysfs.path", scanner->bus_path);
	pci_init(*bus);
	pci_scan_bus(*bus);

	size_t cap = 0;
	for (struct pci_dev *dev = (*bus)->devices; dev != NULL; dev = dev->next) {
		/* Only ids and class for every function: the prog-if costs one more file per
		 * function, so it is read later for the few functions we report. */
		pci_fill_info(dev, PCI_FILL_IDENT | PCI_FILL_CLASS);
		if (table->count == cap) {
			cap = cap ? cap * 2 : 256;
			struct vg_scan_entry *grown =
				realloc(table->entries, cap * sizeof(*table->entries));
			if (grown == NULL) {
				libpci_escape = NULL;
				return vg_error_set(err, ENOMEM, "out of memory");
			}
			table->entries = grown;
		}
		struct vg_scan_entry *entry = &table->entries[table->count++];
		memset(entry, 0, sizeof(*entry));
		entry->fn.addr = (struct vg_bdf){ (uint32_t)dev->domain, dev->bus, dev->dev,
						  dev->func };
		vg_bdf_format(&entry->fn.addr, entry->fn.bdf);
		entry->fn.vendor_id = dev->vendor_id;
		entry->fn.device_id = dev->device_id;
		entry->fn.class_code = (uint32_t)dev->device_class << 8;
		entry->iommu_group = -1;
		entry->numa_node = -1;
		entry->is_gpu = vg_gpu_filter_match(filter, &entry->fn.addr, dev->vendor_id,
						    dev->device_id, entry->fn.class_code);
		if (entry->is_gpu)
			fill_gpu_details(dev, entry);
	}
	libpci_escape = NULL;
	return 0;
}

int vg_scan_table_collect(struct vg_pci_scanner *scanner, const struct vg_gpu_filter *filter,
			  struct vg_scan_table *table, struct vg_error **err)
{
	char devices[PATH_MAX];
	int ret = vg_sysfs_path(&scanner->sysfs, devices, sizeof(devices), err, "bus/pci/devices");
	if (ret < 0)
		return ret;
	/* libpci treats a missing bus as fatal; say what is wrong before it gets there. */
	if (access(devices, R_OK | X_OK) < 0)
		return vg_error_set_errno(err, errno, "no PCI bus under the sysfs root (%s)",
					  devices);
	struct pci_access *bus = new_access();
	if (bus == NULL)
		return vg_error_set(err, ENOMEM, "libpci: cannot allocate an access handle");
	memset(table, 0, sizeof(*table));
	ret = read_bus(scanner, filter, table, &bus, err);
	pci_cleanup(bus);
	if (ret < 0) {
		vg_scan_table_clear(table);
		return ret;
	}
	qsort(table->entries, table->count, sizeof(*table->entries), compare_entries);
	return 0;
}

void vg_scan_table_clear(struct vg_scan_table *table)
{
	free(table->entries);
	table->entries = NULL;
	table->count = 0;
}

struct vg_scan_entry *vg_scan_table_find(struct vg_scan_table *table, const struct vg_bdf *bdf)
{
	size_t lo = 0, hi = table->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int cmp = vg_bdf_compare(&table->entries[mid].fn.addr, bdf);
		if (cmp == 0)
			return &table->entries[mid];
		if (cmp < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

void vg_scan_entry_load_details(const struct vg_sysfs *sysfs, struct vg_scan_entry *entry)
{
	if (entry->details_read)
		return;
	char rel[96];
	snprintf(rel, sizeof(rel), "bus/pci/devices/%s/driver", entry->fn.bdf);
	if (vg_sysfs_link_name(sysfs, rel, entry->fn.driver, sizeof(entry->fn.driver), NULL) < 0)
		entry->fn.driver[0] = '\0';
	long long class_code;
	snprintf(rel, sizeof(rel), "bus/pci/devices/%s/class", entry->fn.bdf);
	if (vg_sysfs_read_long(sysfs, rel, &class_code, NULL) == 0)
		entry->fn.class_code = (uint32_t)class_code & 0xffffff;
	entry->details_read = true;
}

void vg_pci_lookup_names(struct vg_pci_scanner *scanner, struct vg_gpu *gpu)
{
	const int flags = PCI_LOOKUP_NO_NUMBERS | PCI_LOOKUP_NO_HWDB;
	char buf[256];
	jmp_buf escape;
	if (setjmp(escape) != 0) {
		libpci_escape = NULL;
		vg_warn("libpci: %s; naming %s by its ids", libpci_message, gpu->fn.bdf);
		gpu->vendor_name[0] = '\0';
		gpu->name_from_pci_ids = false;
		snprintf(gpu->name, sizeof(gpu->name), "PCI device %04x:%04x", gpu->fn.vendor_id,
			 gpu->fn.device_id);
		return;
	}
	libpci_escape = &escape;
	const char *vendor = pci_lookup_name(scanner->names, buf, sizeof(buf),
					     PCI_LOOKUP_VENDOR | flags, gpu->fn.vendor_id);
	copy_name(gpu->vendor_name, sizeof(gpu->vendor_name), vendor);
	const char *device = pci_lookup_name(scanner->names, buf, sizeof(buf),
					     PCI_LOOKUP_DEVICE | flags, gpu->fn.vendor_id,
					     gpu->fn.device_id);
	gpu->name_from_pci_ids = device != NULL;
	if (device != NULL)
		copy_name(gpu->name, sizeof(gpu->name), device);
	else if (gpu->vendor_name[0] != '\0')
		snprintf(gpu->name, sizeof(gpu->name), "%s device %04x", gpu->vendor_name,
			 gpu->fn.device_id);
	else
		snprintf(gpu->name, sizeof(gpu->name), "PCI device %04x:%04x", gpu->fn.vendor_id,
			 gpu->fn.device_id);
	libpci_escape = NULL;
}

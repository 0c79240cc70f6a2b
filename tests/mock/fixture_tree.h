/*
 * Small fake sysfs trees for cmocka tests, laid out as the kernel lays out /sys (see
 * tests/mock/README.md), plus the readers that tests assert with. Every helper asserts on its
 * own failures, so a test reads as a list of steps. Not for use in forked children: a cmocka
 * assert there would unwind into the parent's runner.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "lib/sysfs.h"

#define FIXTURE_PATH_MAX                                                                           \
	512 /* temp dirs are short; keeps every joined path well under PATH_MAX                    \
	     */
/* Where devices go unless they name another parent: behind one root port. */
#define FIXTURE_BRIDGE_DIR "devices/pci0000:00/0000:00:01.0"

struct fixture_tree {
	char dir[64]; /* the temp dir holding everything */
	char root[FIXTURE_PATH_MAX]; /* stands in for /sys */
	char dev[FIXTURE_PATH_MAX]; /* stands in for /dev */
	char log[FIXTURE_PATH_MAX]; /* for VG_MOCK_LOG */
	struct vg_sysfs sysfs;
};

struct fixture_device {
	const char *bdf;
	const char *driver; /* NULL: unbound */
	int group; /* -1: no IOMMU group (the IOMMU is off) */
	const char *native; /* what drivers_probe binds without an override; NULL: nothing */
	const char *override; /* NULL: unset, reads "(null)" */
	unsigned class_code; /* 24 bits, written as the kernel does: "0x030200" */
	const char *parent; /* directory under the root; NULL: FIXTURE_BRIDGE_DIR */
};

/* An empty tree in a new temp dir: bus/pci/devices, bus/pci/drivers_probe and the fake /dev. */
void fixture_tree_make(struct fixture_tree *t);
/* Removes the temp dir and everything in it. */
void fixture_tree_remove(struct fixture_tree *t);
/* bus/pci/drivers/<name>/ with bind, unbind, new_id and remove_id. */
void fixture_tree_add_driver(const struct fixture_tree *t, const char *name);
/* Unloads a driver: its directory goes. No device may still be bound to it. */
void fixture_tree_remove_driver(const struct fixture_tree *t, const char *name);
/*
 * A device directory with its attributes and the driver and iommu_group links both ways. A device
 * on vfio-pci with a group also gets DEV_ROOT/vfio/<group>, as the kernel made it at bind time.
 */
void fixture_tree_add_device(const struct fixture_tree *t, const struct fixture_device *dev);
/* Joins the tree's root and a printf-style relative path into buf (PATH_MAX bytes). */
void fixture_tree_path(const struct fixture_tree *t, char *buf, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

void fixture_mkdirs(const char *path);
void fixture_put_file(const char *path, const char *content);
void fixture_put_link(const char *target, const char *link);

/* Unsets every VG_MOCK_* variable, so the mock is idle. */
void fixture_mock_env_clear(void);
/* Points VG_MOCK_SYSFS_ROOT, VG_MOCK_DEV_ROOT and VG_MOCK_LOG at the tree. */
void fixture_mock_env_use(const struct fixture_tree *t);

/* The readers return static buffers, valid until the same reader is called again. */
/* The driver a device is bound to, "" when unbound; asserts the link is as the kernel's. */
const char *fixture_driver_of(const struct fixture_tree *t, const char *bdf);
/* Whether drivers/<driver>/<bdf> exists and leads back to the device. */
bool fixture_driver_lists(const struct fixture_tree *t, const char *driver, const char *bdf);
/* A whole small file, or NULL when it cannot be opened. */
const char *fixture_file_content(const char *path);
/* driver_override as read: "(null)\n" when unset. */
const char *fixture_override_of(const struct fixture_tree *t, const char *bdf);
bool fixture_vfio_node_exists(const struct fixture_tree *t, int group);
/* The mock's log, "" when nothing was logged. */
const char *fixture_log(const struct fixture_tree *t);
/*
 * Everything a control write can change, as one string to compare before and after: each
 * device's driver link and override, each driver directory's device links, and the fake
 * /dev/vfio nodes.
 */
void fixture_tree_snapshot(const struct fixture_tree *t, char *buf, size_t size);

#include "shim/bind_journal.h"

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "lib/log.h"
#include "lib/sysfs.h"
#include "lib/sysfs_timed.h"

#define JOURNAL_VERSION 1
#define JOURNAL_MAX_BYTES (1024 * 1024)
#define VFIO_DRIVER "vfio-pci"

const char *vg_bind_progress_name(enum vg_bind_progress progress)
{
	switch (progress) {
	case VG_BIND_JOURNALED:
		return "journaled";
	case VG_BIND_OVERRIDE_SET:
		return "override-set";
	case VG_BIND_UNBOUND:
		return "unbound";
	case VG_BIND_BOUND_VFIO:
		return "bound-vfio";
	case VG_BIND_RELEASED:
		return "released";
	}
	return "unknown";
}

int vg_bind_progress_parse(const char *name, enum vg_bind_progress *out, struct vg_error **err)
{
	for (int p = VG_BIND_JOURNALED; p <= VG_BIND_RELEASED; p++) {
		if (strcmp(name, vg_bind_progress_name((enum vg_bind_progress)p)) == 0) {
			*out = (enum vg_bind_progress)p;
			return 0;
		}
	}
	return vg_error_set(err, EINVAL,
			    "unknown progress '%.64s' (journaled, override-set, unbound, "
			    "bound-vfio or released)",
			    name);
}

/* The first error goes to the caller; later ones are only logged. */
static void keep_first_or_log(struct vg_error **err, struct vg_error *secondary)
{
	if (secondary == NULL)
		return;
	if (err != NULL && *err == NULL) {
		*err = secondary;
		return;
	}
	vg_warn("%s", secondary->msg ? secondary->msg : "unknown error");
	vg_error_free(secondary);
}

/* ---- reading a function's binding ------------------------------------------------------------ */

static int device_rel(char *buf, size_t size, const char *bdf, const char *attr,
		      struct vg_error **err)
{
	int n = snprintf(buf, size, "bus/pci/devices/%s/%s", bdf, attr);
	if (n < 0 || (size_t)n >= size)
		return vg_error_set(err, ENAMETOOLONG, "sysfs path for %.32s/%s is too long", bdf,
				    attr);
	return 0;
}

int vg_pci_binding_read(const struct vg_sysfs *sysfs, const char *bdf, struct vg_pci_binding *out,
			struct vg_error **err)
{
	char rel[128];
	int ret = device_rel(rel, sizeof(rel), bdf, "driver", err);
	if (ret < 0)
		return ret;
	struct vg_pci_binding binding = { 0 };
	cleanup_error struct vg_error *link_err = NULL;
	ret = vg_sysfs_link_name(sysfs, rel, binding.driver, sizeof(binding.driver), &link_err);
	if (ret == -ENOENT)
		binding.driver[0] = '\0'; /* no driver link: unbound */
	else if (ret < 0) {
		keep_first_or_log(err, TAKE_PTR(link_err));
		return ret;
	}

	ret = device_rel(rel, sizeof(rel), bdf, "driver_override", err);
	if (ret < 0)
		return ret;
	/* Larger than any name, so a long value is seen whole and refused, never cut short. */
	char value[256];
	ret = vg_sysfs_read(sysfs, rel, value, sizeof(value), err);
	if (ret < 0)
		return ret;
	if (strcmp(value, "(null)") == 0)
		value[0] = '\0';
	if (strlen(value) >= sizeof(binding.override))
		return vg_error_set(err, ENAMETOOLONG,
				    "driver_override of %s is too long: '%.64s...'", bdf, value);
	memcpy(binding.override, value, strlen(value) + 1);
	*out = binding;
	return 0;
}

/* ---- the file -------------------------------------------------------------------------------- */

static json_object *entry_to_json(const struct vg_bind_journal_entry *e)
{
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "bdf", json_object_new_string(e->bdf));
	json_object_object_add(obj, "iommu_group", json_object_new_int(e->iommu_group));
	json_object_object_add(obj, "original_driver", json_object_new_string(e->original_driver));
	json_object_object_add(obj, "original_override",
			       json_object_new_string(e->original_override));
	json_object_object_add(obj, "was_on_vfio", json_object_new_boolean(e->was_on_vfio));
	json_object_object_add(obj, "progress",
			       json_object_new_string(vg_bind_progress_name(e->progress)));
	return obj;
}

static int journal_write(const struct vg_bind_journal *journal, struct vg_error **err)
{
	json_object *root = json_object_new_object();
	if (root == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	json_object_object_add(root, "version", json_object_new_int(JOURNAL_VERSION));
	json_object *functions = json_object_new_array();
	for (size_t i = 0; i < journal->n_entries; i++)
		json_object_array_add(functions, entry_to_json(&journal->entries[i]));
	json_object_object_add(root, "functions", functions);
	const char *text = json_object_to_json_string_ext(
		root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	cleanup_free char *with_newline = NULL;
	int ret;
	if (text == NULL || asprintf(&with_newline, "%s\n", text) < 0)
		ret = vg_error_set(err, ENOMEM, "out of memory");
	else
		ret = vg_atomic_write_str(journal->path, with_newline, 0600, err);
	json_object_put(root);
	if (ret < 0) {
		vg_error_prefix(err, "bind journal");
		return ret;
	}
	return 0;
}

static int copy_name(char *dst, size_t size, const char *src, const char *what,
		     struct vg_error **err)
{
	size_t len = strlen(src);
	if (len >= size)
		return vg_error_set(err, ENAMETOOLONG, "%s is too long: '%.64s...'", what, src);
	memcpy(dst, src, len + 1);
	return 0;
}

static int get_member(json_object *obj, const char *key, json_type type, json_object **out,
		      struct vg_error **err)
{
	if (!json_object_object_get_ex(obj, key, out))
		return vg_error_set(err, EINVAL, "'%s' is missing", key);
	if (!json_object_is_type(*out, type))
		return vg_error_set(err, EINVAL, "'%s' must be a %s", key, json_type_to_name(type));
	return 0;
}

static int check_keys(json_object *obj, const char *const *known, size_t n_known,
		      struct vg_error **err)
{
	json_object_object_foreach(obj, key, value)
	{
		(void)value;
		bool found = false;
		for (size_t i = 0; i < n_known && !found; i++)
			found = strcmp(key, known[i]) == 0;
		if (!found)
			return vg_error_set(err, EINVAL, "unknown key '%.64s'", key);
	}
	return 0;
}

static int entry_from_json(json_object *obj, struct vg_bind_journal_entry *e, struct vg_error **err)
{
	static const char *const keys[] = {
		"bdf",	       "iommu_group", "original_driver", "original_override",
		"was_on_vfio", "progress"
	};
	if (!json_object_is_type(obj, json_type_object))
		return vg_error_set(err, EINVAL, "a function must be an object");
	int ret = check_keys(obj, keys, VG_ARRAY_SIZE(keys), err);
	json_object *v;
	if (ret == 0)
		ret = get_member(obj, "bdf", json_type_string, &v, err);
	if (ret == 0 && !vg_bdf_is_valid(json_object_get_string(v)))
		ret = vg_error_set(err, EINVAL, "'%.32s' is not a full BDF",
				   json_object_get_string(v));
	if (ret == 0)
		ret = copy_name(e->bdf, sizeof(e->bdf), json_object_get_string(v), "bdf", err);
	if (ret == 0)
		ret = get_member(obj, "iommu_group", json_type_int, &v, err);
	if (ret == 0) {
		int64_t group = json_object_get_int64(v);
		if (group < 0 || group > INT_MAX)
			ret = vg_error_set(err, EINVAL, "iommu_group %lld is out of range",
					   (long long)group);
		e->iommu_group = (int)group;
	}
	if (ret == 0)
		ret = get_member(obj, "original_driver", json_type_string, &v, err);
	if (ret == 0)
		ret = copy_name(e->original_driver, sizeof(e->original_driver),
				json_object_get_string(v), "original_driver", err);
	if (ret == 0)
		ret = get_member(obj, "original_override", json_type_string, &v, err);
	if (ret == 0)
		ret = copy_name(e->original_override, sizeof(e->original_override),
				json_object_get_string(v), "original_override", err);
	if (ret == 0)
		ret = get_member(obj, "was_on_vfio", json_type_boolean, &v, err);
	if (ret == 0)
		e->was_on_vfio = json_object_get_boolean(v);
	if (ret == 0)
		ret = get_member(obj, "progress", json_type_string, &v, err);
	if (ret == 0)
		ret = vg_bind_progress_parse(json_object_get_string(v), &e->progress, err);
	return ret;
}

static int journal_from_json(json_object *root, struct vg_bind_journal *journal,
			     struct vg_error **err)
{
	static const char *const keys[] = { "version", "functions" };
	if (!json_object_is_type(root, json_type_object))
		return vg_error_set(err, EINVAL, "the top level must be an object");
	int ret = check_keys(root, keys, VG_ARRAY_SIZE(keys), err);
	if (ret < 0)
		return ret;
	json_object *v;
	ret = get_member(root, "version", json_type_int, &v, err);
	if (ret < 0)
		return ret;
	if (json_object_get_int64(v) != JOURNAL_VERSION)
		return vg_error_set(err, EINVAL, "version %lld is not %d",
				    (long long)json_object_get_int64(v), JOURNAL_VERSION);
	ret = get_member(root, "functions", json_type_array, &v, err);
	if (ret < 0)
		return ret;
	size_t n = json_object_array_length(v);
	if (n == 0)
		return vg_error_set(err, EINVAL, "'functions' is empty");
	journal->entries = calloc(n, sizeof(*journal->entries));
	if (journal->entries == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	journal->n_entries = n;
	for (size_t i = 0; i < n; i++) {
		ret = entry_from_json(json_object_array_get_idx(v, i), &journal->entries[i], err);
		if (ret < 0) {
			vg_error_prefix(err, "function %zu", i);
			return ret;
		}
	}
	return 0;
}

static struct vg_bind_journal *journal_new(const char *path)
{
	struct vg_bind_journal *journal = calloc(1, sizeof(*journal));
	if (journal == NULL)
		return NULL;
	journal->path = strdup(path);
	if (journal->path == NULL) {
		free(journal);
		return NULL;
	}
	return journal;
}

int vg_bind_journal_create(const char *path, const struct vg_bind_journal_entry *entries,
			   size_t n_entries, struct vg_bind_journal **out, struct vg_error **err)
{
	if (n_entries == 0)
		return vg_error_set(err, EINVAL, "bind journal %s: no functions", path);
	struct stat st;
	if (lstat(path, &st) == 0)
		return vg_error_set(err, EEXIST,
				    "bind journal %s already exists; replay it and delete it first",
				    path);
	if (errno != ENOENT)
		return vg_error_set_errno(err, errno, "bind journal %s", path);
	cleanup_bind_journal struct vg_bind_journal *journal = journal_new(path);
	if (journal == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	journal->entries = calloc(n_entries, sizeof(*entries));
	if (journal->entries == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	memcpy(journal->entries, entries, n_entries * sizeof(*entries));
	journal->n_entries = n_entries;
	int ret = journal_write(journal, err);
	if (ret < 0)
		return ret;
	*out = TAKE_PTR(journal);
	return 0;
}

int vg_bind_journal_load(const char *path, struct vg_bind_journal **out, struct vg_error **err)
{
	cleanup_free char *text = NULL;
	int ret = vg_read_file(path, JOURNAL_MAX_BYTES, &text, NULL, err);
	if (ret < 0) {
		vg_error_prefix(err, "bind journal");
		return ret;
	}
	enum json_tokener_error parse_err = json_tokener_success;
	json_object *root = json_tokener_parse_verbose(text, &parse_err);
	if (root == NULL)
		return vg_error_set(err, EINVAL, "bind journal %s: %s", path,
				    json_tokener_error_desc(parse_err));
	cleanup_bind_journal struct vg_bind_journal *journal = journal_new(path);
	if (journal == NULL)
		ret = vg_error_set(err, ENOMEM, "out of memory");
	else
		ret = journal_from_json(root, journal, err);
	json_object_put(root);
	if (ret < 0) {
		vg_error_prefix(err, "bind journal %s", path);
		return ret;
	}
	*out = TAKE_PTR(journal);
	return 0;
}

int vg_bind_journal_update(struct vg_bind_journal *journal, size_t index,
			   enum vg_bind_progress progress, struct vg_error **err)
{
	if (index >= journal->n_entries)
		return vg_error_set(err, EINVAL, "bind journal %s has no function %zu",
				    journal->path, index);
	enum vg_bind_progress before = journal->entries[index].progress;
	journal->entries[index].progress = progress;
	int ret = journal_write(journal, err);
	if (ret < 0)
		journal->entries[index].progress = before; /* memory keeps matching the disk */
	return ret;
}

void vg_bind_journal_free(struct vg_bind_journal *journal)
{
	if (journal == NULL)
		return;
	free(journal->path);
	free(journal->entries);
	free(journal);
}

/* ---- putting a function back ----------------------------------------------------------------- */

static int control_write(const struct vg_sysfs *sysfs, const char *value, int timeout_ms,
			 struct vg_error **err, const char *rel_fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int control_write(const struct vg_sysfs *sysfs, const char *value, int timeout_ms,
			 struct vg_error **err, const char *rel_fmt, ...)
{
	char rel[PATH_MAX];
	va_list ap;
	va_start(ap, rel_fmt);
	int n = vsnprintf(rel, sizeof(rel), rel_fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(rel))
		return vg_error_set(err, ENAMETOOLONG, "sysfs path %.64s... is too long", rel);
	return vg_sysfs_write_timed(sysfs, rel, value, timeout_ms, err);
}

/* The kernel clears driver_override on a lone newline; an empty write would do nothing. */
static int write_override(const struct vg_sysfs *sysfs, const char *bdf, const char *value,
			  int timeout_ms, struct vg_error **err)
{
	return control_write(sysfs, value[0] ? value : "\n", timeout_ms, err,
			     "bus/pci/devices/%s/driver_override", bdf);
}

/*
 * The override to hold while binding the original driver. Usually that is the original override
 * itself; but one naming another driver (written after the bind, never probed) would make the
 * kernel refuse the bind, so then the override is cleared for the bind and set afterwards.
 */
static const char *override_for_rebind(const struct vg_bind_journal_entry *e)
{
	if (e->original_override[0] == '\0' || e->original_driver[0] == '\0' ||
	    strcmp(e->original_override, e->original_driver) == 0)
		return e->original_override;
	return "";
}

static const char *shown_driver(const char *driver)
{
	return driver[0] ? driver : "nothing";
}

static const char *shown_override(const char *override)
{
	return override[0] ? override : "(null)";
}

static int verify_original(const struct vg_sysfs *sysfs, const struct vg_bind_journal_entry *e,
			   const struct vg_error *bind_err, struct vg_error **err)
{
	struct vg_pci_binding now;
	int ret = vg_pci_binding_read(sysfs, e->bdf, &now, err);
	if (ret < 0)
		return ret;
	if (strcmp(now.driver, e->original_driver) == 0 &&
	    strcmp(now.override, e->original_override) == 0)
		return 0;
	return vg_error_set(err, EIO,
			    "did not come back: bound to %s (was %s), driver_override %s "
			    "(was %s)%s%s%s",
			    shown_driver(now.driver), shown_driver(e->original_driver),
			    shown_override(now.override), shown_override(e->original_override),
			    bind_err ? " (" : "", bind_err && bind_err->msg ? bind_err->msg : "",
			    bind_err ? ")" : "");
}

/* Binds the original driver; if the kernel refuses, drivers_probe gets a second chance. */
static int rebind_original(const struct vg_sysfs *sysfs, const struct vg_bind_journal_entry *e,
			   int timeout_ms, struct vg_error **bind_err)
{
	int ret = control_write(sysfs, e->bdf, timeout_ms, bind_err, "bus/pci/drivers/%s/bind",
				e->original_driver);
	if (ret == 0)
		return 0;
	vg_warn("%s; trying drivers_probe", (*bind_err)->msg ? (*bind_err)->msg : "bind failed");
	cleanup_error struct vg_error *probe_err = NULL;
	if (vg_sysfs_write_timed(sysfs, "bus/pci/drivers_probe", e->bdf, timeout_ms, &probe_err) <
	    0)
		vg_warn("%s", probe_err->msg ? probe_err->msg : "drivers_probe failed");
	return ret;
}

static int restore_binding(const struct vg_sysfs *sysfs, const struct vg_bind_journal_entry *e,
			   int timeout_ms, struct vg_error **err)
{
	struct vg_pci_binding now;
	int ret = vg_pci_binding_read(sysfs, e->bdf, &now, err);
	if (ret < 0)
		return ret;
	if (strcmp(now.driver, VFIO_DRIVER) == 0) {
		ret = control_write(sysfs, e->bdf, timeout_ms, err, "bus/pci/drivers/%s/unbind",
				    VFIO_DRIVER);
		if (ret < 0)
			return ret;
		now.driver[0] = '\0';
	}
	const char *rebind_override = override_for_rebind(e);
	if (strcmp(now.override, rebind_override) != 0) {
		ret = write_override(sysfs, e->bdf, rebind_override, timeout_ms, err);
		if (ret < 0)
			return ret;
		memcpy(now.override, rebind_override, strlen(rebind_override) + 1);
	}
	cleanup_error struct vg_error *bind_err = NULL;
	if (strcmp(now.driver, e->original_driver) != 0) {
		/* Only vfio-pci is ours to take a function from; anything else is left alone. */
		if (now.driver[0] != '\0')
			return vg_error_set(err, EBUSY,
					    "bound to %s, neither vfio-pci nor its original "
					    "driver %s; left alone",
					    now.driver, shown_driver(e->original_driver));
		/* A function found without a driver stays without one: no probe. */
		if (e->original_driver[0] != '\0')
			rebind_original(sysfs, e, timeout_ms, &bind_err);
	}
	if (strcmp(now.override, e->original_override) != 0) {
		ret = write_override(sysfs, e->bdf, e->original_override, timeout_ms, err);
		if (ret < 0)
			return ret;
	}
	return verify_original(sysfs, e, bind_err, err);
}

int vg_bind_journal_restore(const struct vg_sysfs *sysfs, struct vg_bind_journal *journal,
			    size_t index, int timeout_ms, struct vg_error **err)
{
	if (index >= journal->n_entries)
		return vg_error_set(err, EINVAL, "bind journal %s has no function %zu",
				    journal->path, index);
	const struct vg_bind_journal_entry *e = &journal->entries[index];
	if (e->progress == VG_BIND_RELEASED)
		return 0;
	if (!e->was_on_vfio) {
		int ret = restore_binding(sysfs, e, timeout_ms, err);
		if (ret < 0) {
			vg_error_prefix(err, "restore %s", e->bdf);
			return ret;
		}
	}
	return vg_bind_journal_update(journal, index, VG_BIND_RELEASED, err);
}

int vg_bind_journal_replay(const struct vg_sysfs *sysfs, const char *journal_path, int timeout_ms,
			   struct vg_error **err)
{
	cleanup_bind_journal struct vg_bind_journal *journal = NULL;
	int ret = vg_bind_journal_load(journal_path, &journal, err);
	if (ret < 0)
		return ret;
	int first = 0;
	for (size_t i = journal->n_entries; i-- > 0;) {
		struct vg_error *step_err = NULL;
		ret = vg_bind_journal_restore(sysfs, journal, i, timeout_ms, &step_err);
		if (ret < 0 && first == 0)
			first = ret;
		keep_first_or_log(err, step_err);
	}
	return first;
}

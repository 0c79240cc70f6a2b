#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "lib/config.h"
#include "lib/error.h"

static struct vg_error *load(struct vg_config *config, const char *text)
{
	struct vg_error *err = NULL;
	vg_config_defaults(config);
	vg_config_load_string(config, text, strlen(text), "config.yaml", &err);
	return err;
}

static void defaults_select_nvidia_display_and_3d(void **state)
{
	(void)state;
	struct vg_config config;
	assert_null(load(&config, ""));
	assert_string_equal(config.sysfs_root, "/sys");
	assert_int_equal(config.filter.n_vendors, 1);
	assert_int_equal(config.filter.vendors[0], 0x10de);
	assert_int_equal(config.filter.n_classes, 2);
	assert_false(config.allow_boot_vga);
}

static void reads_every_key(void **state)
{
	(void)state;
	struct vg_config config;
	struct vg_error *err = load(&config, "sysfs_root: /tmp/fixture\n"
					     "allow_boot_vga: true\n"
					     "log_format: json\n"
					     "gpu_filter:\n"
					     "  ids: [\"1234:11e8\", \"8086:10d3\"]\n"
					     "  bdfs: [\"0000:00:03.0\"]\n");
	assert_null(err);
	assert_string_equal(config.sysfs_root, "/tmp/fixture");
	assert_string_equal(config.socket, "/run/vmgpu/vmgpu.sock");
	assert_int_equal(config.default_vcpus, 2);
	assert_true(config.allow_boot_vga);
	assert_int_equal(config.log_format, VG_LOG_JSON);
	assert_int_equal(config.filter.n_vendors, 0);
	assert_int_equal(config.filter.n_ids, 2);
	assert_int_equal(config.filter.ids[1].device, 0x10d3);
	assert_int_equal(config.filter.n_bdfs, 1);
}

static void assert_error(const char *text, const char *expected)
{
	struct vg_config config;
	struct vg_error *err = load(&config, text);
	assert_non_null(err);
	if (strstr(err->msg, expected) == NULL)
		fail_msg("error '%s' does not contain '%s'", err->msg, expected);
	vg_error_free(err);
	/* A rejected file changes nothing. */
	assert_string_equal(config.sysfs_root, "/sys");
}

static void errors_name_the_key_and_line(void **state)
{
	(void)state;
	assert_error("sysfs_root: /x\nsysfs_rot: /y\n", "config.yaml:2: sysfs_rot: unknown key");
	assert_error("sysfs_root: /x\nallow_boot_vga: yes\n",
		     "config.yaml:2: allow_boot_vga: expected true or false");
	assert_error("gpu_filter:\n  vendors: [\"nvidia\"]\n",
		     "config.yaml:2: gpu_filter.vendors: vendor 'nvidia' is not");
	assert_error("gpu_filter:\n  bdfs: [\"0000:zz:00.0\"]\n",
		     "config.yaml:2: gpu_filter.bdfs: '0000:zz:00.0' is not a PCI address");
	assert_error("gpu_filter:\n  device: []\n", "config.yaml:2: gpu_filter.device: unknown key");
	assert_error("log_format: xml\n", "config.yaml:1: log_format: log format 'xml'");
	assert_error("sysfs_root: [a]\n", "config.yaml:1: sysfs_root: expected a path string");
	assert_error("sysfs_root: relative/path\n", "must be an absolute path");
	assert_error("- a\n- b\n", "the config must be a mapping");
	assert_error("a: [\n", "invalid YAML");
	assert_error("default_vcpus: 0\n", "config.yaml:1: default_vcpus: must be between 1 and 256");
	assert_error("default_vcpus: two\n", "config.yaml:1: default_vcpus: expected an integer");
	assert_error("accel: fast\n", "config.yaml:1: accel: 'fast' is not one of: auto kvm tcg");
	assert_error("health_interval_s: 0.05\n",
		     "config.yaml:1: health_interval_s: must be between 0.1 and 3600 seconds");
	assert_error("health_interval_s: soon\n",
		     "config.yaml:1: health_interval_s: expected a number of seconds");
	assert_error("socket: /run/this/path/is/much/too/long/for/a/unix/socket/because/sun_path/"
		     "holds/only/one/hundred/and/eight/bytes.sock\n",
		     "config.yaml:1: socket: path is too long");
}

static void kubelet_keys_default_and_load(void **state)
{
	(void)state;
	struct vg_config config;
	assert_null(load(&config, ""));
	assert_string_equal(config.kubelet_dir, "/var/lib/kubelet/device-plugins");
	assert_string_equal(config.pod_resources_socket,
			    "/var/lib/kubelet/pod-resources/kubelet.sock");
	assert_int_equal(config.resource_naming, VG_RESOURCE_SINGLE);
	assert_string_equal(config.resource_name, "nvidia.com/gpu");
	assert_int_equal(config.n_resource_aliases, 0);

	struct vg_error *err = load(&config, "kubelet_dir: /tmp/k/device-plugins\n"
					     "pod_resources_socket: \"\"\n"
					     "resource_naming: per-model\n"
					     "resource_name: example.com/accel\n"
					     "resource_aliases:\n"
					     "  GH100_H100_SXM5_80GB: h100\n"
					     "  \"10de:2331\": nvidia.com/H100_PCIe\n");
	assert_null(err);
	assert_string_equal(config.kubelet_dir, "/tmp/k/device-plugins");
	assert_string_equal(config.pod_resources_socket, "");
	assert_int_equal(config.resource_naming, VG_RESOURCE_PER_MODEL);
	assert_string_equal(config.resource_name, "example.com/accel");
	assert_int_equal(config.n_resource_aliases, 2);
	assert_string_equal(config.resource_aliases[0].model, "GH100_H100_SXM5_80GB");
	assert_string_equal(config.resource_aliases[0].name, "h100");
	assert_string_equal(config.resource_aliases[1].model, "10de:2331");
	assert_string_equal(config.resource_aliases[1].name, "nvidia.com/H100_PCIe");
}

static void kubelet_keys_are_checked(void **state)
{
	(void)state;
	assert_error("resource_naming: per-gpu\n",
		     "config.yaml:1: resource_naming: expected single or per-model");
	assert_error("resource_name: gpu\n", "resource_name: 'gpu' is not of the form domain/name");
	assert_error("resource_name: a/b/c\n", "is not of the form domain/name");
	assert_error("resource_name: NVIDIA.com/gpu\n", "the domain must be a lowercase DNS name");
	assert_error("resource_name: kubernetes.io/gpu\n", "reserved for native resources");
	assert_error("resource_name: x.kubernetes.io/gpu\n", "reserved for native resources");
	assert_error("resource_name: nvidia.com/-gpu\n", "the name must be 1 to 63");
	assert_error("resource_name: nvidia.com/\n", "the name must be 1 to 63");
	assert_error("resource_aliases: [a]\n", "resource_aliases: expected a mapping");
	assert_error("resource_aliases:\n  H100: \"bad name\"\n",
		     "config.yaml:2: resource_aliases.H100: a name without a domain must be");
	assert_error("resource_aliases:\n  H100: Example.com/h100\n",
		     "config.yaml:2: resource_aliases.H100: 'Example.com/h100': the domain");
	assert_error("resource_aliases:\n  H100: a\n  h100: b\n",
		     "config.yaml:3: resource_aliases.h100: the model is listed twice");
	assert_error("pod_resources_socket: /var/lib/kubelet/this/path/is/much/too/long/for/a/unix/"
		     "socket/because/sun_path/holds/only/one/hundred/and/eight/bytes.sock\n",
		     "pod_resources_socket: path is too long");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(defaults_select_nvidia_display_and_3d),
		cmocka_unit_test(reads_every_key),
		cmocka_unit_test(errors_name_the_key_and_line),
		cmocka_unit_test(kubelet_keys_default_and_load),
		cmocka_unit_test(kubelet_keys_are_checked),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

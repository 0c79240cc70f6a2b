/* lib/kube without a network: label values, the label merge patch, Events, the ResourceSlice,
 * the subset comparison, base64, the in-cluster endpoint and kubeconfig parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/error.h"
#include "lib/kube/kube_endpoint.h"
#include "lib/kube/kube_objects.h"

static json_object *parse(const char *text)
{
	json_object *obj = json_tokener_parse(text);
	assert_non_null(obj);
	return obj;
}

static void assert_json(json_object *obj, const char *expected)
{
	json_object *want = parse(expected);
	if (!json_object_equal(obj, want))
		fail_msg("got %s\nwant %s", json_object_to_json_string(obj), expected);
	json_object_put(want);
}

static void test_label_values(void **state)
{
	(void)state;
	char out[64];
	vg_kube_label_value("GH100[H100 SXM5 80GB]", out);
	assert_string_equal(out, "H100-SXM5-80GB");
	vg_kube_label_value("NVIDIA Corporation device 2e12", out);
	assert_string_equal(out, "NVIDIA-Corporation-device-2e12");
	vg_kube_label_value("  --AD102GL [RTX 6000 Ada Generation]", out);
	assert_string_equal(out, "RTX-6000-Ada-Generation");
	vg_kube_label_value("[]", out); /* empty brackets: the whole name */
	assert_string_equal(out, "");
	vg_kube_label_value("ÄÖ!!", out);
	assert_string_equal(out, "");
	char long_name[200];
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	long_name[62] = ' '; /* a cut right after a separator must not end in '-' */
	vg_kube_label_value(long_name, out);
	assert_int_equal(strlen(out), 62);
	assert_true(out[61] == 'a');
}

static const struct vg_kube_gpu h100 = {
	.index = 0,
	.bdf = "0000:1b:00.0",
	.pcie_root = "pci0000:10",
	.numa_node = 0,
	.iommu_group = 11,
	.vendor_id = 0x10de,
	.device_id = 0x2330,
	.product = "GH100[H100 SXM5 80GB]",
	.state = "available",
};

static void test_node_labels_and_patch(void **state)
{
	(void)state;
	struct vg_kube_gpu gpus[2] = { h100, h100 };
	gpus[1].index = 1;
	json_object *desired = vg_kube_node_labels(gpus, 2, true);
	assert_json(desired, "{\"vmgpu.io/gpu.count\":\"2\",\"vmgpu.io/gpu.present\":\"true\","
			     "\"vmgpu.io/passthrough-ready\":\"true\","
			     "\"vmgpu.io/gpu.product\":\"H100-SXM5-80GB\"}");
	/* Stale owned labels become null, others stay untouched, equal ones are not sent. */
	json_object *current = parse("{\"vmgpu.io/gpu.count\":\"2\",\"vmgpu.io/gpu.memory\":\"80\","
				     "\"vmgpu.io/custom\":\"keep\",\"kubernetes.io/os\":\"linux\"}");
	json_object *patch = vg_kube_labels_patch(current, desired);
	assert_json(patch, "{\"metadata\":{\"labels\":{\"vmgpu.io/gpu.present\":\"true\","
			   "\"vmgpu.io/passthrough-ready\":\"true\","
			   "\"vmgpu.io/gpu.product\":\"H100-SXM5-80GB\","
			   "\"vmgpu.io/gpu.memory\":null}}}");
	assert_string_equal(vg_kube_json_text(json_object_object_get(
				    json_object_object_get(patch, "metadata"), "labels")),
			    "{\"vmgpu.io/gpu.present\":\"true\",\"vmgpu.io/passthrough-ready\":"
			    "\"true\",\"vmgpu.io/gpu.product\":\"H100-SXM5-80GB\","
			    "\"vmgpu.io/gpu.memory\":null}");
	json_object_put(patch);
	json_object_put(current);
	/* Applied: nothing left to do. */
	current = parse("{\"vmgpu.io/gpu.count\":\"2\",\"vmgpu.io/gpu.present\":\"true\","
			"\"vmgpu.io/passthrough-ready\":\"true\","
			"\"vmgpu.io/gpu.product\":\"H100-SXM5-80GB\",\"x\":\"y\"}");
	assert_null(vg_kube_labels_patch(current, desired));
	json_object_put(current);
	json_object_put(desired);

	/* No GPUs: no product label; mixed models say so. */
	desired = vg_kube_node_labels(NULL, 0, false);
	assert_json(desired, "{\"vmgpu.io/gpu.count\":\"0\",\"vmgpu.io/gpu.present\":\"false\","
			     "\"vmgpu.io/passthrough-ready\":\"false\"}");
	json_object_put(desired);
	snprintf(gpus[1].product, sizeof(gpus[1].product), "AD102GL [L40S]");
	desired = vg_kube_node_labels(gpus, 2, false);
	assert_string_equal(json_object_get_string(
				    json_object_object_get(desired, "vmgpu.io/gpu.product")),
			    "mixed");
	json_object_put(desired);
}

static void test_event_objects(void **state)
{
	(void)state;
	struct vg_kube_event ev = { .reason = "GPUUnhealthy", .type = "Warning",
				    .message = "GPU 0 is unhealthy", .kind = "Node",
				    .name = "node-a", .uid = "u1", .time = 1700000000 };
	json_object *obj = vg_kube_event_object(&ev, "node-a", "default", 0xabc);
	assert_json(obj, "{\"apiVersion\":\"v1\",\"kind\":\"Event\","
			 "\"metadata\":{\"name\":\"node-a.0000000000000abc\",\"namespace\":\"default\"},"
			 "\"involvedObject\":{\"apiVersion\":\"v1\",\"kind\":\"Node\","
			 "\"name\":\"node-a\",\"uid\":\"u1\"},"
			 "\"reason\":\"GPUUnhealthy\",\"message\":\"GPU 0 is unhealthy\","
			 "\"type\":\"Warning\",\"source\":{\"component\":\"vmgpu-agent\","
			 "\"host\":\"node-a\"},\"firstTimestamp\":\"2023-11-14T22:13:20Z\","
			 "\"lastTimestamp\":\"2023-11-14T22:13:20Z\",\"count\":1,"
			 "\"reportingComponent\":\"vmgpu-agent\",\"reportingInstance\":\"node-a\"}");
	json_object_put(obj);
	/* Another namespace for a node's Event: the involved object must name it too. */
	obj = vg_kube_event_object(&ev, "node-a", "gpu-ops", 1);
	assert_string_equal(json_object_get_string(json_object_object_get(
				    json_object_object_get(obj, "involvedObject"), "namespace")),
			    "gpu-ops");
	json_object_put(obj);
	/* A pod's Event lives in the pod's namespace. */
	struct vg_kube_event pod = ev;
	snprintf(pod.kind, sizeof(pod.kind), "Pod");
	snprintf(pod.name, sizeof(pod.name), "Bad_Name");
	snprintf(pod.pod_namespace, sizeof(pod.pod_namespace), "team-a");
	assert_string_equal(vg_kube_event_namespace(&pod, "default"), "team-a");
	obj = vg_kube_event_object(&pod, "node-a", "default", 2);
	json_object *md = json_object_object_get(obj, "metadata");
	assert_string_equal(json_object_get_string(json_object_object_get(md, "name")),
			    "vmgpu.0000000000000002");
	assert_string_equal(json_object_get_string(json_object_object_get(md, "namespace")),
			    "team-a");
	json_object_put(obj);
}

static void test_resource_slice(void **state)
{
	(void)state;
	struct vg_kube_gpu gpus[2] = { h100, h100 };
	gpus[1].index = 5;
	gpus[1].numa_node = -1;
	gpus[1].iommu_group = -1;
	gpus[1].pcie_root[0] = '\0';
	memset(gpus[1].product, 'x', 100);
	gpus[1].product[100] = '\0';
	snprintf(gpus[1].state, sizeof(gpus[1].state), "unhealthy");
	json_object *slice = vg_kube_resource_slice("node-a", "uid-a", gpus, 2, 7);
	char *expected_x = calloc(1, 65);
	memset(expected_x, 'x', 64);
	char expected[4096];
	snprintf(expected, sizeof(expected),
		 "{\"apiVersion\":\"resource.k8s.io/v1\",\"kind\":\"ResourceSlice\","
		 "\"metadata\":{\"name\":\"node-a-vmgpu\",\"ownerReferences\":[{\"apiVersion\":"
		 "\"v1\",\"kind\":\"Node\",\"name\":\"node-a\",\"uid\":\"uid-a\",\"controller\":"
		 "true}]},"
		 "\"spec\":{\"driver\":\"gpu.vmgpu.io\",\"nodeName\":\"node-a\","
		 "\"pool\":{\"name\":\"node-a\",\"generation\":7,\"resourceSliceCount\":1},"
		 "\"devices\":[{\"name\":\"gpu-0\",\"attributes\":{"
		 "\"resource.kubernetes.io/pciBusID\":{\"string\":\"0000:1b:00.0\"},"
		 "\"resource.kubernetes.io/pcieRoot\":{\"string\":\"pci0000:10\"},"
		 "\"numa\":{\"int\":0},\"productName\":{\"string\":\"GH100[H100 SXM5 80GB]\"},"
		 "\"vendorID\":{\"string\":\"0x10de\"},\"deviceID\":{\"string\":\"0x2330\"},"
		 "\"iommuGroup\":{\"int\":11},\"state\":{\"string\":\"available\"}}},"
		 "{\"name\":\"gpu-5\",\"attributes\":{"
		 "\"resource.kubernetes.io/pciBusID\":{\"string\":\"0000:1b:00.0\"},"
		 "\"productName\":{\"string\":\"%s\"},"
		 "\"vendorID\":{\"string\":\"0x10de\"},\"deviceID\":{\"string\":\"0x2330\"},"
		 "\"state\":{\"string\":\"unhealthy\"}}}]}}",
		 expected_x);
	assert_json(slice, expected);
	free(expected_x);

	/* What the server adds (uid, resourceVersion, defaults) is no difference... */
	json_object *server = json_object_get(slice);
	json_object *copy = NULL;
	json_object_deep_copy(server, &copy, NULL);
	json_object_object_add(json_object_object_get(copy, "metadata"), "resourceVersion",
			       json_object_new_string("42"));
	assert_true(vg_kube_json_contains(copy, slice));
	/* ...but a changed value or a missing device is. */
	json_object *devices = json_object_object_get(json_object_object_get(copy, "spec"),
						      "devices");
	json_object_array_del_idx(devices, 1, 1);
	assert_false(vg_kube_json_contains(copy, slice));
	json_object_put(copy);
	json_object_put(server);
	json_object_put(slice);

	/* 128 devices at most. */
	struct vg_kube_gpu *many = calloc(130, sizeof(*many));
	for (int i = 0; i < 130; i++) {
		many[i] = h100;
		many[i].index = i;
	}
	slice = vg_kube_resource_slice("n", NULL, many, 130, 1);
	assert_int_equal(json_object_array_length(json_object_object_get(
				 json_object_object_get(slice, "spec"), "devices")),
			 128);
	assert_null(json_object_object_get(json_object_object_get(slice, "metadata"),
					   "ownerReferences"));
	json_object_put(slice);
	free(many);
}

static void test_base64_and_names(void **state)
{
	(void)state;
	struct vg_kube_pem pem = { 0 };
	struct vg_error *err = NULL;
	assert_int_equal(vg_kube_base64_decode("aGVs\nbG8=", &pem, &err), 0);
	assert_int_equal(pem.len, 5);
	assert_string_equal(pem.data, "hello");
	free(pem.data);
	assert_true(vg_kube_base64_decode("aGVsbG8*", &pem, &err) < 0);
	assert_non_null(strstr(err->msg, "invalid base64"));
	vg_error_free(err);
	err = NULL;
	assert_true(vg_kube_base64_decode("aGVsb", &pem, &err) < 0);
	vg_error_free(err);

	assert_true(vg_kube_is_dns_subdomain("node-1.example.com"));
	assert_false(vg_kube_is_dns_subdomain("Node1"));
	assert_false(vg_kube_is_dns_subdomain("-node"));
	assert_false(vg_kube_is_dns_subdomain(""));
}

static const char *fake_env_host;
static const char *fake_env(const char *name)
{
	if (strcmp(name, "KUBERNETES_SERVICE_HOST") == 0)
		return fake_env_host;
	if (strcmp(name, "KUBERNETES_SERVICE_PORT") == 0)
		return "6443";
	return NULL;
}

static char tmpdir[] = "/tmp/vg-kube-unit-XXXXXX";

static void write_file(const char *name, const char *text)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "we");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void test_in_cluster_endpoint(void **state)
{
	(void)state;
	write_file("token", "  secret-token\n");
	write_file("ca.crt", "not checked here\n");
	struct vg_kube_endpoint ep;
	struct vg_error *err = NULL;
	fake_env_host = "fd00:10:96::1";
	assert_true(vg_kube_in_cluster(fake_env));
	assert_int_equal(vg_kube_endpoint_in_cluster(&ep, tmpdir, fake_env, &err), 0);
	assert_string_equal(ep.server, "https://[fd00:10:96::1]:6443");
	assert_string_equal(ep.token, "secret-token");
	vg_kube_endpoint_clear(&ep);
	fake_env_host = "10.96.0.1";
	assert_int_equal(vg_kube_endpoint_in_cluster(&ep, tmpdir, fake_env, &err), 0);
	assert_string_equal(ep.server, "https://10.96.0.1:6443");
	vg_kube_endpoint_clear(&ep);
	fake_env_host = NULL;
	assert_false(vg_kube_in_cluster(fake_env));
	assert_true(vg_kube_endpoint_in_cluster(&ep, tmpdir, fake_env, &err) < 0);
	assert_non_null(strstr(err->msg, "KUBERNETES_SERVICE_HOST"));
	vg_error_free(err);
}

static void test_kubeconfig(void **state)
{
	(void)state;
	write_file("kubeconfig", "apiVersion: v1\nkind: Config\ncurrent-context: dev\n"
				 "contexts:\n- name: other\n  context: {cluster: nope, user: nope}\n"
				 "- name: dev\n  context: {cluster: c1, user: u1}\n"
				 "clusters:\n- name: c1\n  cluster:\n"
				 "    server: https://127.0.0.1:6443/\n"
				 "    certificate-authority: ca.crt\n"
				 "users:\n- name: u1\n  user:\n    tokenFile: token\n"
				 "    client-certificate-data: aGVsbG8=\n"
				 "    client-key-data: a2V5\n");
	char path[256];
	snprintf(path, sizeof(path), "%s/kubeconfig", tmpdir);
	struct vg_kube_endpoint ep;
	struct vg_error *err = NULL;
	assert_int_equal(vg_kube_endpoint_from_kubeconfig(&ep, path, &err), 0);
	assert_string_equal(ep.server, "https://127.0.0.1:6443");
	char want[256];
	snprintf(want, sizeof(want), "%s/ca.crt", tmpdir);
	assert_string_equal(ep.ca_file, want);
	assert_string_equal(ep.token, "secret-token");
	assert_string_equal(ep.cert_pem.data, "hello");
	assert_string_equal(ep.key_pem.data, "key");
	vg_kube_endpoint_clear(&ep);

	write_file("kubeconfig", "current-context: dev\ncontexts:\n- name: dev\n  context:\n"
				 "    cluster: c1\n    user: u1\nclusters:\n- name: c1\n  cluster:\n"
				 "    server: https://h:1\nusers:\n- name: u1\n  user:\n"
				 "    exec: {command: aws}\n");
	assert_true(vg_kube_endpoint_from_kubeconfig(&ep, path, &err) < 0);
	assert_non_null(strstr(err->msg, "'exec' credentials are not supported"));
	vg_error_free(err);
	err = NULL;
	write_file("kubeconfig", "current-context: missing\ncontexts: []\n");
	assert_true(vg_kube_endpoint_from_kubeconfig(&ep, path, &err) < 0);
	assert_non_null(strstr(err->msg, "no context named 'missing'"));
	vg_error_free(err);
}

int main(void)
{
	if (mkdtemp(tmpdir) == NULL)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_label_values),
		cmocka_unit_test(test_node_labels_and_patch),
		cmocka_unit_test(test_event_objects),
		cmocka_unit_test(test_resource_slice),
		cmocka_unit_test(test_base64_and_names),
		cmocka_unit_test(test_in_cluster_endpoint),
		cmocka_unit_test(test_kubeconfig),
	};
	int failed = cmocka_run_group_tests(tests, NULL, NULL);
	const char *names[] = { "token", "ca.crt", "kubeconfig" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char path[256];
		snprintf(path, sizeof(path), "%s/%s", tmpdir, names[i]);
		unlink(path);
	}
	rmdir(tmpdir);
	return failed;
}

/* vmgpuctl run NAME: one RunPodSandbox call whose vmgpu.io/ annotations carry the GPU request
 * and the VM's shape. Flags are checked here first, so a typo gets a precise message without a
 * round trip; the agent checks everything again. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "lib/bdf.h"
#include "lib/cleanup.h"
#include "lib/error.h"
#include "method_paths.h"

/* Starting a VM under TCG takes minutes; the agent answers when the guest is ready. */
#define RUN_DEFAULT_TIMEOUT_S 300
/* The agent's limits (agent/gpu_request.c): keep the two in step. */
#define RUN_MAX_GPUS 16
#define RUN_MAX_GPU_INDEX 65535
#define RUN_MAX_SELECTOR 511

static void run_usage(FILE *out, const char *program)
{
	fprintf(out,
		"Usage: %s run NAME [--gpus N | --gpu-device BDF|INDEX ... | --gpu-selector EXPR]\n"
		"          [--kernel PATH] [--initrd PATH] [--vcpus N] [--memory MIB]\n"
		"          [--namespace NS] [--label KEY=VALUE ...] [--annotation KEY=VALUE ...]\n"
		"          [--timeout SECONDS]\n"
		"\n"
		"Starts a sandbox VM with GPUs passed through, waits until its guest is ready and\n"
		"prints the sandbox ID alone, so that id=$(%s run NAME) works.\n"
		"\n"
		"Flags:\n"
		"      --gpus N             N GPUs of any kind (0 to %d); with --gpu-selector, N\n"
		"                           GPUs that match it (default 1)\n"
		"      --gpu-device ID      this GPU, by PCI address or index; repeat for more\n"
		"      --gpu-selector EXPR  GPUs by attribute: product=H100,numa=0, vendor!=1002,\n"
		"                           pcie-root in (pci0000:10,pci0000:50)\n"
		"      --kernel PATH        guest kernel on this node (default: the agent's)\n"
		"      --initrd PATH        guest initrd on this node (default: the agent's)\n"
		"      --vcpus N            virtual CPUs, 1 to 256 (default: the agent's)\n"
		"      --memory MIB         guest RAM in MiB, 64 to 4194304 (default: the agent's)\n"
		"      --namespace NS       the sandbox's namespace (default \"default\")\n"
		"      --label KEY=VALUE    a label on the sandbox; repeatable\n"
		"      --annotation K=V     an annotation, vmgpu.io/ ones included; repeatable\n"
		"      --timeout SECONDS    how long to wait for the sandbox to be ready (default %d)\n",
		program, program, RUN_MAX_GPUS, RUN_DEFAULT_TIMEOUT_S);
	fprintf(out, "      --socket PATH        the agent's API socket\n"
		     "      --config FILE        read FILE instead of " VG_DEFAULT_CONFIG_PATH "\n");
}

enum {
	FLAG_GPUS = VG_CLI_VERB_FLAG,
	FLAG_GPU_DEVICE,
	FLAG_GPU_SELECTOR,
	FLAG_KERNEL,
	FLAG_INITRD,
	FLAG_VCPUS,
	FLAG_MEMORY,
	FLAG_NAMESPACE,
	FLAG_LABEL,
	FLAG_ANNOTATION,
};

static const struct option run_options[] = {
	{ "gpus", required_argument, NULL, FLAG_GPUS },
	{ "gpu-device", required_argument, NULL, FLAG_GPU_DEVICE },
	{ "gpu-selector", required_argument, NULL, FLAG_GPU_SELECTOR },
	{ "kernel", required_argument, NULL, FLAG_KERNEL },
	{ "initrd", required_argument, NULL, FLAG_INITRD },
	{ "vcpus", required_argument, NULL, FLAG_VCPUS },
	{ "memory", required_argument, NULL, FLAG_MEMORY },
	{ "namespace", required_argument, NULL, FLAG_NAMESPACE },
	{ "label", required_argument, NULL, FLAG_LABEL },
	{ "annotation", required_argument, NULL, FLAG_ANNOTATION },
	{ NULL, 0, NULL, 0 },
};

/* key=value pairs in the order given, with the flag that set each (for messages). */
struct kv_entry {
	char *key, *value;
	const char *source;
};

struct kv_list {
	struct kv_entry *entries;
	size_t n;
};

struct run_flags {
	const char *gpus, *selector, *kernel, *initrd, *vcpus, *memory, *namespace_;
	long long n_gpus;
	char devices[RUN_MAX_GPUS][VG_BDF_STRLEN]; /* normalised: an index or a lowercase BDF */
	size_t n_devices;
	struct kv_list labels, annotations;
};

static void kv_list_clear(struct kv_list *list)
{
	for (size_t i = 0; i < list->n; i++) {
		free(list->entries[i].key);
		free(list->entries[i].value);
	}
	free(list->entries);
	memset(list, 0, sizeof(*list));
}

static int kv_list_add(struct kv_list *list, const char *key, size_t key_len, const char *value,
		       const char *source, const char *what, struct vg_error **err)
{
	for (size_t i = 0; i < list->n; i++) {
		const struct kv_entry *e = &list->entries[i];
		if (strlen(e->key) == key_len && strncmp(e->key, key, key_len) == 0)
			return vg_error_set(err, EINVAL, "%s %s is set twice (by %s and by %s)",
					    what, e->key, e->source, source);
	}
	struct kv_entry *grown = realloc(list->entries, (list->n + 1) * sizeof(*grown));
	if (grown == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	list->entries = grown;
	struct kv_entry e = { strndup(key, key_len), strdup(value), source };
	if (e.key == NULL || e.value == NULL) {
		free(e.key);
		free(e.value);
		return vg_error_set(err, ENOMEM, "out of memory");
	}
	list->entries[list->n++] = e;
	return 0;
}

static int add_key_value(struct kv_list *list, const char *arg, const char *flag,
			 const char *what, struct vg_error **err)
{
	const char *eq = strchr(arg, '=');
	if (eq == NULL || eq == arg)
		return vg_error_set(err, EINVAL, "%s wants KEY=VALUE, not '%s'", flag, arg);
	return kv_list_add(list, arg, (size_t)(eq - arg), eq + 1, flag, what, err);
}

/* An index (0..65535) or a PCI address, with or without the domain; BDFs are normalised to
 * the agent's lowercase DDDD:BB:DD.F. */
static int add_gpu_device(struct run_flags *f, const char *arg, struct vg_error **err)
{
	char item[VG_BDF_STRLEN];
	bool digits = arg[0] != '\0' && strspn(arg, "0123456789") == strlen(arg);
	if (digits) {
		long long index;
		if (vg_cli_parse_int(arg, "a GPU index", 0, RUN_MAX_GPU_INDEX, &index, err) < 0)
			return -EINVAL;
		snprintf(item, sizeof(item), "%lld", index);
	} else {
		struct vg_bdf bdf;
		if (vg_bdf_parse(arg, true, &bdf, NULL) < 0)
			return vg_error_set(err, EINVAL,
					    "--gpu-device '%s' is neither a GPU index nor a PCI "
					    "address such as 0000:1b:00.0",
					    arg);
		vg_bdf_format(&bdf, item);
	}
	for (size_t i = 0; i < f->n_devices; i++)
		if (strcmp(f->devices[i], item) == 0)
			return vg_error_set(err, EINVAL, "--gpu-device %s is given twice", item);
	if (f->n_devices == RUN_MAX_GPUS)
		return vg_error_set(err, EINVAL, "at most %d --gpu-device flags", RUN_MAX_GPUS);
	strcpy(f->devices[f->n_devices++], item);
	return 0;
}

/* Kubernetes names: DNS-1123 labels for namespaces, subdomains for pod names. */
static bool dns1123_valid(const char *s, size_t max_len, bool dots)
{
	size_t len = strlen(s);
	if (len == 0 || len > max_len || !isalnum((unsigned char)s[0]) ||
	    !isalnum((unsigned char)s[len - 1]))
		return false;
	for (const char *p = s; *p; p++)
		if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '-' ||
		      (dots && *p == '.')))
			return false;
	return true;
}

static int set_once(const char **slot, const char *arg, const char *flag, struct vg_error **err)
{
	if (*slot)
		return vg_error_set(err, EINVAL, "%s is given twice ('%s' and '%s')", flag, *slot,
				    arg);
	*slot = arg;
	return 0;
}

static int on_run_flag(void *ctx, int val, const char *arg, struct vg_error **err)
{
	struct run_flags *f = ctx;
	long long unused;
	switch (val) {
	case FLAG_GPUS:
		if (vg_cli_parse_int(arg, "--gpus", 0, RUN_MAX_GPUS, &f->n_gpus, err) < 0)
			return -EINVAL;
		return set_once(&f->gpus, arg, "--gpus", err);
	case FLAG_GPU_DEVICE:
		return add_gpu_device(f, arg, err);
	case FLAG_GPU_SELECTOR:
		if (strspn(arg, " \t") == strlen(arg) || strlen(arg) > RUN_MAX_SELECTOR)
			return vg_error_set(err, EINVAL,
					    "--gpu-selector wants 1 to %d characters of terms "
					    "such as product=H100,numa=0",
					    RUN_MAX_SELECTOR);
		return set_once(&f->selector, arg, "--gpu-selector", err);
	case FLAG_KERNEL:
	case FLAG_INITRD: {
		const char *flag = val == FLAG_KERNEL ? "--kernel" : "--initrd";
		if (arg[0] == '\0')
			return vg_error_set(err, EINVAL, "%s: the path is empty", flag);
		return set_once(val == FLAG_KERNEL ? &f->kernel : &f->initrd, arg, flag, err);
	}
	case FLAG_VCPUS:
		if (vg_cli_parse_int(arg, "--vcpus", 1, 256, &unused, err) < 0)
			return -EINVAL;
		return set_once(&f->vcpus, arg, "--vcpus", err);
	case FLAG_MEMORY:
		if (vg_cli_parse_int(arg, "--memory (MiB)", 64, 4194304, &unused, err) < 0)
			return -EINVAL;
		return set_once(&f->memory, arg, "--memory", err);
	case FLAG_NAMESPACE:
		if (!dns1123_valid(arg, 63, false))
			return vg_error_set(err, EINVAL,
					    "--namespace '%s' is not a valid namespace: 1 to 63 "
					    "lowercase letters, digits or '-', starting and ending "
					    "with a letter or digit",
					    arg);
		return set_once(&f->namespace_, arg, "--namespace", err);
	case FLAG_LABEL:
		return add_key_value(&f->labels, arg, "--label", "label", err);
	case FLAG_ANNOTATION:
		return add_key_value(&f->annotations, arg, "--annotation", "annotation", err);
	}
	return vg_error_set(err, EINVAL, "unhandled flag %d (a vmgpuctl bug)", val);
}

static int annotate(struct kv_list *annotations, const char *key, const char *value,
		    const char *flag, struct vg_error **err)
{
	return kv_list_add(annotations, key, strlen(key), value, flag, "annotation", err);
}

/* The agent runs with its own working directory: a relative path means ours. */
static char *absolute_path(const char *path)
{
	if (path[0] == '/')
		return strdup(path);
	cleanup_free char *cwd = getcwd(NULL, 0);
	if (cwd == NULL)
		return NULL;
	char *out = NULL;
	return asprintf(&out, "%s/%s", cwd, path) < 0 ? NULL : out;
}

static int add_path_annotation(struct kv_list *annotations, const char *key, const char *path,
			       const char *flag, struct vg_error **err)
{
	cleanup_free char *absolute = absolute_path(path);
	if (absolute == NULL)
		return vg_error_set_errno(err, errno, "%s %s: cannot make the path absolute", flag,
					  path);
	return annotate(annotations, key, absolute, flag, err);
}

/* The flags' annotations go first, then the user's own --annotation ones (already in
 * f->annotations); a key both set is refused by kv_list_add. */
static int build_annotations(const struct run_flags *f, struct kv_list *out, struct vg_error **err)
{
	int ret = 0;
	if (f->gpus)
		ret = annotate(out, "vmgpu.io/gpu-count", f->gpus, "--gpus", err);
	if (ret == 0 && f->n_devices > 0) {
		char joined[RUN_MAX_GPUS * VG_BDF_STRLEN] = "";
		for (size_t i = 0; i < f->n_devices; i++) {
			if (i)
				strcat(joined, ",");
			strcat(joined, f->devices[i]);
		}
		ret = annotate(out, "vmgpu.io/gpu-devices", joined, "--gpu-device", err);
	}
	if (ret == 0 && f->selector)
		ret = annotate(out, "vmgpu.io/gpu-selector", f->selector, "--gpu-selector", err);
	if (ret == 0 && f->kernel)
		ret = add_path_annotation(out, "vmgpu.io/kernel", f->kernel, "--kernel", err);
	if (ret == 0 && f->initrd)
		ret = add_path_annotation(out, "vmgpu.io/initrd", f->initrd, "--initrd", err);
	if (ret == 0 && f->vcpus)
		ret = annotate(out, "vmgpu.io/vcpus", f->vcpus, "--vcpus", err);
	if (ret == 0 && f->memory)
		ret = annotate(out, "vmgpu.io/memory-mib", f->memory, "--memory", err);
	for (size_t i = 0; ret == 0 && i < f->annotations.n; i++) {
		const struct kv_entry *e = &f->annotations.entries[i];
		ret = annotate(out, e->key, e->value, e->source, err);
	}
	return ret;
}

static int check_gpu_flags(const struct run_flags *f, struct vg_error **err)
{
	if (f->gpus && f->n_devices)
		return vg_error_set(err, EINVAL,
				    "--gpus and --gpu-device are exclusive: name the GPUs or count "
				    "them, not both");
	if (f->n_devices && f->selector)
		return vg_error_set(err, EINVAL,
				    "--gpu-device and --gpu-selector are exclusive: name the GPUs or "
				    "select them by attribute, not both");
	if (f->selector && f->gpus && f->n_gpus == 0)
		return vg_error_set(err, EINVAL,
				    "--gpus 0 with --gpu-selector: a selector asks for at least one "
				    "GPU");
	return 0;
}

/* A random (version 4) UUID for the sandbox's metadata, as the kubelet gives each pod. */
static int random_uuid(char out[37], struct vg_error **err)
{
	uint8_t b[16];
	cleanup_close int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vg_error_set_errno(err, errno, "open /dev/urandom");
	if (read(fd, b, sizeof(b)) != (ssize_t)sizeof(b))
		return vg_error_set_errno(err, errno ? errno : EIO, "read /dev/urandom");
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	snprintf(out, 37,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
		 b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
		 b[14], b[15]);
	return 0;
}

/* The request's map entries point at the strings of the kv_lists; these arrays own only the
 * entry structs. */
struct run_maps {
	Runtime__V1__PodSandboxConfig__LabelsEntry *labels, **label_ptrs;
	Runtime__V1__PodSandboxConfig__AnnotationsEntry *annotations, **annotation_ptrs;
};

static void run_maps_clear(struct run_maps *maps)
{
	free(maps->labels);
	free(maps->label_ptrs);
	free(maps->annotations);
	free(maps->annotation_ptrs);
}

static int run_maps_fill(struct run_maps *maps, const struct kv_list *labels,
			 const struct kv_list *annotations, struct vg_error **err)
{
	maps->labels = calloc(labels->n + 1, sizeof(*maps->labels));
	maps->label_ptrs = calloc(labels->n + 1, sizeof(*maps->label_ptrs));
	maps->annotations = calloc(annotations->n + 1, sizeof(*maps->annotations));
	maps->annotation_ptrs = calloc(annotations->n + 1, sizeof(*maps->annotation_ptrs));
	if (!maps->labels || !maps->label_ptrs || !maps->annotations || !maps->annotation_ptrs)
		return vg_error_set(err, ENOMEM, "out of memory");
	for (size_t i = 0; i < labels->n; i++) {
		runtime__v1__pod_sandbox_config__labels_entry__init(&maps->labels[i]);
		maps->labels[i].key = labels->entries[i].key;
		maps->labels[i].value = labels->entries[i].value;
		maps->label_ptrs[i] = &maps->labels[i];
	}
	for (size_t i = 0; i < annotations->n; i++) {
		runtime__v1__pod_sandbox_config__annotations_entry__init(&maps->annotations[i]);
		maps->annotations[i].key = annotations->entries[i].key;
		maps->annotations[i].value = annotations->entries[i].value;
		maps->annotation_ptrs[i] = &maps->annotations[i];
	}
	return 0;
}

static int run_sandbox(struct vg_api *api, const char *program, const char *name,
		       const struct run_flags *f, const struct kv_list *annotations,
		       struct vg_error **err)
{
	char uid[37];
	struct run_maps maps = { 0 };
	int ret = random_uuid(uid, err);
	if (ret == 0)
		ret = run_maps_fill(&maps, &f->labels, annotations, err);
	if (ret < 0) {
		run_maps_clear(&maps);
		return ret;
	}

	Runtime__V1__PodSandboxMetadata metadata = RUNTIME__V1__POD_SANDBOX_METADATA__INIT;
	metadata.name = (char *)name;
	metadata.namespace_ = (char *)(f->namespace_ ? f->namespace_ : "default");
	metadata.uid = uid;
	metadata.attempt = 0;
	Runtime__V1__PodSandboxConfig config = RUNTIME__V1__POD_SANDBOX_CONFIG__INIT;
	config.metadata = &metadata;
	config.n_labels = f->labels.n;
	config.labels = maps.label_ptrs;
	config.n_annotations = annotations->n;
	config.annotations = maps.annotation_ptrs;
	Runtime__V1__RunPodSandboxRequest request = RUNTIME__V1__RUN_POD_SANDBOX_REQUEST__INIT;
	request.config = &config;

	cleanup_proto Runtime__V1__RunPodSandboxResponse *response = NULL;
	enum vg_grpc_code code;
	ret = vg_api_call(api, VG_CRI_RUN_POD_SANDBOX, &request.base,
			  &runtime__v1__run_pod_sandbox_response__descriptor,
			  (ProtobufCMessage **)&response, &code, err);
	run_maps_clear(&maps);
	if (ret < 0 && code == VG_GRPC_DEADLINE_EXCEEDED && err && *err) {
		/* The agent goes on starting it: say where to look instead of leaving it unseen. */
		cleanup_error struct vg_error *timed_out = TAKE_PTR(*err);
		return vg_error_set(err, ETIMEDOUT,
				    "%s; the sandbox may still be starting (see '%s get sandboxes'); "
				    "--timeout SECONDS waits longer",
				    timed_out->msg, program);
	}
	if (ret == 0)
		printf("%s\n", response->pod_sandbox_id);
	return ret;
}

static int check_name(const char *name, struct vg_error **err)
{
	if (!dns1123_valid(name, 253, true))
		return vg_error_set(err, EINVAL,
				    "sandbox name '%s' is not valid: 1 to 253 lowercase letters, "
				    "digits, '-' or '.', starting and ending with a letter or digit",
				    name);
	return 0;
}

int vg_cmd_run(int argc, char **argv, const char *program)
{
	struct run_flags flags = { 0 };
	struct vg_cli_verb_flags verb_flags = {
		.options = run_options, .on_flag = on_run_flag, .ctx = &flags
	};
	struct vg_cli_options opts;
	cleanup_error struct vg_error *err = NULL;
	int ret = vg_cli_parse(argc, argv, program, run_usage, &verb_flags, &opts, &err);
	if (ret == 0)
		ret = vg_cli_refuse_output(&opts, &err);
	if (ret == 0 && argc - opts.first_arg != 1)
		ret = vg_error_set(&err, EINVAL, "run takes one NAME, got %d arguments; see %s run "
						 "--help",
				   argc - opts.first_arg, program);
	if (ret == 0)
		ret = check_name(argv[opts.first_arg], &err);
	if (ret == 0)
		ret = check_gpu_flags(&flags, &err);
	struct kv_list annotations = { 0 };
	if (ret == 0)
		ret = build_annotations(&flags, &annotations, &err);
	int exit_code = ret > 0 ? 0 : 2;
	if (ret == 0) {
		struct vg_api api;
		vg_api_init(&api, &opts, RUN_DEFAULT_TIMEOUT_S);
		ret = run_sandbox(&api, program, argv[opts.first_arg], &flags, &annotations, &err);
		exit_code = ret < 0 ? 1 : 0;
	}
	kv_list_clear(&annotations);
	kv_list_clear(&flags.labels);
	kv_list_clear(&flags.annotations);
	if (ret < 0)
		return exit_code == 2 ? vg_cli_fail(program, err) : vg_cli_error(program, err);
	return exit_code;
}

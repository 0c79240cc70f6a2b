/* Where the Kubernetes API server is and how to prove who we are: the pod's service account
 * (in-cluster), or a kubeconfig for development. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

struct vg_error;

#define VG_KUBE_SERVICE_ACCOUNT_DIR "/var/run/secrets/kubernetes.io/serviceaccount"

/* PEM bytes held in memory (kubeconfig *-data fields), so no secret is written to disk. */
struct vg_kube_pem {
	char *data;
	size_t len;
};

struct vg_kube_endpoint {
	char server[512]; /* "https://host:port[/prefix]", no trailing slash */
	/* Trust: a CA file, CA PEM bytes, or no verification at all (insecure). */
	char ca_file[PATH_MAX];
	struct vg_kube_pem ca_pem;
	bool insecure;
	/* A bearer token: fixed, or read from token_file (and read again after a 401, because
	 * projected service account tokens rotate). */
	char token_file[PATH_MAX];
	char *token;
	/* A client certificate and key: files or PEM bytes. */
	char cert_file[PATH_MAX];
	char key_file[PATH_MAX];
	struct vg_kube_pem cert_pem;
	struct vg_kube_pem key_pem;
};

/* getenv, or a test's own lookup. */
typedef const char *(*vg_kube_getenv_fn)(const char *name);

/* True when the process runs in a pod: KUBERNETES_SERVICE_HOST is set. */
bool vg_kube_in_cluster(vg_kube_getenv_fn getenv_fn);
/* https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (an IPv6 host in brackets), with
 * sa_dir/token and sa_dir/ca.crt. Both files must be readable now. */
int vg_kube_endpoint_in_cluster(struct vg_kube_endpoint *ep, const char *sa_dir,
				vg_kube_getenv_fn getenv_fn, struct vg_error **err);
/* The current context of a kubeconfig: its cluster's server and CA (or
 * insecure-skip-tls-verify), its user's token, tokenFile or client certificate. Relative paths
 * are relative to the kubeconfig's directory. exec and auth-provider users are refused. */
int vg_kube_endpoint_from_kubeconfig(struct vg_kube_endpoint *ep, const char *path,
				     struct vg_error **err);
void vg_kube_endpoint_clear(struct vg_kube_endpoint *ep);

/* Reads a token file, without surrounding whitespace; an empty token is an error. */
int vg_kube_read_token(const char *path, char **out, struct vg_error **err);
/* Base64 (standard alphabet, whitespace ignored) into malloc'd bytes, NUL-terminated. */
int vg_kube_base64_decode(const char *text, struct vg_kube_pem *out, struct vg_error **err);

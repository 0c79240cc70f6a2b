#!/usr/bin/python3
"""vmgpuctl doctor and vmgpu-agent --list-gpus against every fake-sysfs fixture.

Each fixture is built fresh by tests/fixtures/build_fixtures.py; the expectations below are
written from the fixture descriptions, never from the program's own output.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("VMGPU_BIN_DIR", os.path.join(SOURCE, "build"))
VMGPUCTL = os.path.join(BIN, "cli", "vmgpuctl")
AGENT = os.path.join(BIN, "agent", "vmgpu-agent")

IOMMU_OFF = ("IOMMU is off; boot with intel_iommu=on or amd_iommu=on "
             "(or iommu.passthrough=0 on arm64)")
GB10_DIRECT = ("IOMMU group 8 has a reserved region of type direct "
               "(0x00000000c0000000-0x00000000c7ffffff): the firmware demands a 1:1 IOMMU "
               "mapping and the kernel will refuse VFIO for this device")
SHARED_NIC = ("IOMMU group 30 also holds 0000:42:00.0 [0200 8086:1521], bound to host driver "
              "igb; passing the group through would take that device from the host: move the "
              "GPU to a slot with its own IOMMU group, or unbind 0000:42:00.0 from igb")
BOOT_VGA = ("this GPU is the host's boot VGA device (boot_vga=1) and drives the console; "
            "set allow_boot_vga: true in the config to pass it through anyway")
FALLEN_OFF = ("config space reads back 0xffff: the device has fallen off the bus; check dmesg "
              "for AER or Xid 79 errors, then reset the slot or reboot")


def no_vfio_reason(modules_dir):
    return ("the vfio-pci module is unavailable (neither loaded nor found in %s): install the "
            "kernel's vfio modules, then modprobe vfio-pci" % modules_dir)


# bdf: (state, reason, numa, pcie_root, companions, driver)
EXPECTED = {
    "hgx8": {
        "0000:1b:00.0": ("available", "", 0, "pci0000:10", [], "nvidia"),
        "0000:43:00.0": ("available", "", 0, "pci0000:10", [], "nvidia"),
        "0000:52:00.0": ("available", "", 0, "pci0000:50", [], "nvidia"),
        "0000:61:00.0": ("available", "", 0, "pci0000:50", [], "nvidia"),
        "0000:9d:00.0": ("available", "", 1, "pci0000:90", [], "nvidia"),
        "0000:c3:00.0": ("available", "", 1, "pci0000:90", [], "nvidia"),
        "0000:d1:00.0": ("available", "", 1, "pci0000:d0", [], "nvidia"),
        "0000:df:00.0": ("available", "", 1, "pci0000:d0", [], "nvidia"),
    },
    "workstation": {
        "0000:01:00.0": ("available", "", -1, "pci0000:00", ["0000:01:00.1"], "nvidia"),
    },
    "gb10": {
        "000f:01:00.0": ("unsupported", GB10_DIRECT, 0, "pci000f:00", [], "nvidia"),
    },
    "iommu-off": {
        "0000:00:1e.0": ("unsupported", IOMMU_OFF, -1, "pci0000:00", [], "nvidia"),
        "0000:00:1f.0": ("unsupported", IOMMU_OFF, -1, "pci0000:00", [], "nvidia"),
    },
    "shared-nic": {
        "0000:41:00.0": ("unsupported", SHARED_NIC, 0, "pci0000:40", [], "nvidia"),
        "0000:81:00.0": ("available", "", 1, "pci0000:80", [], "nvidia"),
    },
    "boot-vga": {
        "0000:65:00.0": ("unsupported", BOOT_VGA, 0, "pci0000:64",
                         ["0000:65:00.1", "0000:65:00.2", "0000:65:00.3"], "nvidia"),
        "0000:b3:00.0": ("available", "", 1, "pci0000:b2",
                         ["0000:b3:00.1", "0000:b3:00.2", "0000:b3:00.3"], "nvidia"),
    },
    "no-vfio": {
        "0000:01:00.0": ("unsupported", None, -1, "pci0000:00", ["0000:01:00.1"], "nvidia"),
    },
    "fallen-off-bus": {
        "0000:17:00.0": ("available", "", 0, "pci0000:17", [], "nvidia"),
        "0000:ca:00.0": ("unhealthy", FALLEN_OFF, 1, "pci0000:ca", [], "nvidia"),
    },
    "vfio-bound": {
        "0000:21:00.0": ("available", "", 0, None, [], "vfio-pci"),
        "0000:e1:00.0": ("available", "", 1, None, [], "nvidia"),
    },
}


class DoctorOnFixtures(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="vmgpu-doctor-")
        cls.fixtures = os.path.join(cls.tmp, "fixtures")
        subprocess.run([sys.executable, os.path.join(SOURCE, "tests/fixtures/build_fixtures.py"),
                        cls.fixtures], check=True, stdout=subprocess.DEVNULL)
        # The host side is empty on purpose: no /dev nodes, no modules, an iommu-less cmdline.
        cls.empty = os.path.join(cls.tmp, "empty")
        os.makedirs(os.path.join(cls.empty, "proc"))
        with open(os.path.join(cls.empty, "proc", "cmdline"), "w") as f:
            f.write("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro\n")
        cls.config = os.path.join(cls.tmp, "config.yaml")
        with open(cls.config, "w") as f:
            f.write("# empty: defaults only\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def host_flags(self, name, config=None):
        return ["--config", config or self.config,
                "--sysfs-root", os.path.join(self.fixtures, name),
                "--dev-root", self.empty, "--proc-root", os.path.join(self.empty, "proc"),
                "--modules-dir", self.empty]

    def doctor(self, name, config=None):
        proc = subprocess.run([VMGPUCTL, "doctor", "-o", "json"] + self.host_flags(name, config),
                              capture_output=True, text=True, timeout=60)
        self.assertIn(proc.returncode, (0, 1), proc.stderr)
        report = json.loads(proc.stdout)
        return proc.returncode, report

    def check_fixture(self, name):
        rc, report = self.doctor(name)
        expected = EXPECTED[name]
        gpus = report["gpus"]
        self.assertEqual([g["bdf"] for g in gpus], sorted(expected),
                         "GPUs must be listed in BDF order")
        self.assertEqual([g["index"] for g in gpus], list(range(len(expected))))
        for gpu in gpus:
            state, reason, numa, root, companions, driver = expected[gpu["bdf"]]
            if reason is None:
                reason = no_vfio_reason(self.empty)
            with self.subTest(fixture=name, gpu=gpu["bdf"]):
                self.assertEqual(gpu["state"], state)
                self.assertEqual(gpu["reason"], reason)
                self.assertEqual(gpu["numa_node"], numa)
                if root is not None:
                    self.assertEqual(gpu["pcie_root"], root)
                self.assertEqual([c["bdf"] for c in gpu["companions"]], companions)
                self.assertEqual(gpu["driver"], driver)
        # The empty host side has no /dev/kvm, so passthrough cannot work anywhere here.
        self.assertEqual(rc, 1)
        self.assertFalse(report["ready"])
        return report

    def test_hgx8(self):
        report = self.check_fixture("hgx8")
        self.assertTrue(196 <= report["functions_scanned"] <= 206, report["functions_scanned"])
        gpu = report["gpus"][0]
        self.assertEqual(gpu["name"], "GH100[H100 SXM5 80GB]")
        self.assertEqual(gpu["name_source"], "pci.ids")
        self.assertEqual((gpu["vendor_id"], gpu["device_id"]), ("0x10de", "0x2330"))
        self.assertEqual((gpu["subsystem_vendor_id"], gpu["subsystem_device_id"]),
                         ("0x10de", "0x16c1"))
        self.assertEqual(gpu["class"], "0x030200")
        self.assertEqual({b["index"]: b["size"] for b in gpu["bars"]},
                         {0: 16 << 20, 1: 128 << 30, 3: 32 << 20})
        self.assertEqual(gpu["reset_method"], "flr bus")
        self.assertEqual(gpu["iommu_group"]["type"], "DMA")
        self.assertEqual([m["bdf"] for m in gpu["iommu_group"]["members"]], ["0000:1b:00.0"])

    def test_workstation(self):
        report = self.check_fixture("workstation")
        group = report["gpus"][0]["iommu_group"]
        self.assertEqual(group["number"], 14)
        self.assertEqual(group["type"], "DMA-FQ")
        self.assertEqual([(m["bdf"], m["driver"]) for m in group["members"]],
                         [("0000:00:01.0", "pcieport"), ("0000:01:00.0", "nvidia"),
                          ("0000:01:00.1", "snd_hda_intel")])
        self.assertEqual(report["gpus"][0]["companions"][0]["class"], "0x040300")
        self.assertEqual(report["gpus"][0]["boot_vga"], False)

    def test_gb10(self):
        report = self.check_fixture("gb10")
        gpu = report["gpus"][0]
        # 10de:2e12 is not in pci.ids: the name falls back to the vendor and device id.
        self.assertEqual(gpu["name"], "NVIDIA Corporation device 2e12")
        self.assertEqual(gpu["name_source"], "fallback")
        self.assertIn({"start": "0x00000000c0000000", "end": "0x00000000c7ffffff",
                       "type": "direct"}, gpu["iommu_group"]["reserved_regions"])

    def test_iommu_off(self):
        report = self.check_fixture("iommu-off")
        self.assertIsNone(report["gpus"][0]["iommu_group"])
        checks = {c["name"]: c for c in report["host"]["checks"]}
        self.assertEqual(checks["iommu"]["status"], "fail")
        self.assertIn(IOMMU_OFF, checks["iommu"]["detail"])

    def test_shared_nic(self):
        self.check_fixture("shared-nic")

    def test_boot_vga(self):
        self.check_fixture("boot-vga")

    def test_boot_vga_allowed_by_config(self):
        config = os.path.join(self.tmp, "allow-boot-vga.yaml")
        with open(config, "w") as f:
            f.write("allow_boot_vga: true\n")
        _, report = self.doctor("boot-vga", config)
        self.assertEqual([(g["bdf"], g["state"]) for g in report["gpus"]],
                         [("0000:65:00.0", "available"), ("0000:b3:00.0", "available")])

    def test_no_vfio(self):
        report = self.check_fixture("no-vfio")
        checks = {c["name"]: c["status"] for c in report["host"]["checks"]}
        self.assertEqual(checks["vfio_pci"], "fail")

    def test_fallen_off_bus(self):
        self.check_fixture("fallen-off-bus")

    def test_vfio_bound(self):
        report = self.check_fixture("vfio-bound")
        self.assertEqual(report["gpus"][0]["driver_override"], "vfio-pci")

    def test_filter_selects_other_vendors(self):
        config = os.path.join(self.tmp, "filter.yaml")
        with open(config, "w") as f:
            f.write("gpu_filter:\n  ids: [\"15b3:1021\"]\n  bdfs: [\"0000:05:00.0\"]\n")
        _, report = self.doctor("hgx8", config)
        bdfs = [g["bdf"] for g in report["gpus"]]
        self.assertIn("0000:05:00.0", bdfs)
        self.assertEqual(len(bdfs), 5, bdfs)  # four ConnectX-7 NICs and one NVSwitch bridge
        self.assertEqual(bdfs, sorted(bdfs))

    def test_agent_lists_the_same_inventory(self):
        for name in ("hgx8", "boot-vga", "shared-nic"):
            _, report = self.doctor(name)
            proc = subprocess.run([AGENT, "--list-gpus", "-o", "json"]
                                  + self.host_flags(name)[:4],
                                  capture_output=True, text=True, timeout=60)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            listed = json.loads(proc.stdout)
            self.assertEqual([(g["bdf"], g["state"], g["reason"]) for g in listed],
                             [(g["bdf"], g["state"], g["reason"]) for g in report["gpus"]])

    def test_index_is_stable_across_runs(self):
        first = [g["bdf"] for g in self.doctor("hgx8")[1]["gpus"]]
        second = [g["bdf"] for g in self.doctor("hgx8")[1]["gpus"]]
        self.assertEqual(first, second)

    def test_captured_tree_reads_the_same(self):
        archive = os.path.join(self.tmp, "capture.tar.gz")
        subprocess.run([os.path.join(SOURCE, "hack/capture-sysfs.sh"), "-s",
                        os.path.join(self.fixtures, "boot-vga"), archive],
                       check=True, capture_output=True, timeout=120)
        unpacked = os.path.join(self.fixtures, "captured")
        os.makedirs(unpacked)
        subprocess.run(["tar", "-xzf", archive, "-C", unpacked], check=True)
        inner = [d for d in os.listdir(unpacked)]
        root = unpacked if os.path.isdir(os.path.join(unpacked, "bus")) else \
            os.path.join(unpacked, inner[0])
        os.rename(root, os.path.join(self.fixtures, "captured-boot-vga"))
        _, original = self.doctor("boot-vga")
        _, captured = self.doctor("captured-boot-vga")
        self.assertEqual(original["gpus"], captured["gpus"])

    def test_real_h100_capture(self):
        """A tree captured read-only from a real H100 cloud VM (IOMMU off) reads unchanged."""
        unpacked = os.path.join(self.fixtures, "h100-capture")
        os.makedirs(unpacked)
        subprocess.run(["tar", "-xzf", os.path.join(SOURCE, "tests/fixtures/captured/h100-cloud-vm.tar.gz"),
                        "-C", unpacked], check=True)
        os.rename(os.path.join(unpacked, "sys"), os.path.join(self.fixtures, "h100-cloud-vm"))
        _, report = self.doctor("h100-cloud-vm")
        self.assertEqual(report["functions_scanned"], 7)
        [gpu] = report["gpus"]
        self.assertEqual((gpu["bdf"], gpu["name"], gpu["numa_node"], gpu["state"], gpu["reason"]),
                         ("0000:00:06.0", "GH100[H100 SXM5 80GB]", -1, "unsupported", IOMMU_OFF))
        self.assertEqual({b["index"]: b["size"] for b in gpu["bars"]},
                         {0: 16 << 20, 2: 128 << 30, 4: 32 << 20})
        self.assertEqual(gpu["driver"], "nvidia")

    def test_missing_sysfs_root_is_a_clear_error(self):
        proc = subprocess.run([VMGPUCTL, "doctor", "--config", self.config, "--sysfs-root",
                               os.path.join(self.tmp, "nope")],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("sysfs root", proc.stderr)
        self.assertIn("No such file or directory", proc.stderr)

    def test_bad_config_names_key_and_line(self):
        config = os.path.join(self.tmp, "bad.yaml")
        with open(config, "w") as f:
            f.write("sysfs_root: /sys\nallow_boot_vga: maybe\n")
        proc = subprocess.run([VMGPUCTL, "doctor", "--config", config],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("bad.yaml:2: allow_boot_vga: expected true or false", proc.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)

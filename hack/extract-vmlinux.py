#!/usr/bin/python3
"""Extracts the uncompressed ELF vmlinux from an x86 bzImage.

QEMU boots such an ELF through its PVH entry point (the kernel's XEN_ELFNOTE_PHYS32_ENTRY note),
which skips the in-guest decompression: slow under TCG. The payload is located through the boot
protocol header (payload_offset and payload_length, protocol 2.08 and later), not by searching
for magic bytes, and decompressed with xz, gzip or lzma as the header's data says.

Usage: extract-vmlinux.py BZIMAGE OUTPUT
Exit status 0 on success; 1 with a message on stderr when the image cannot be used.
"""
import lzma
import os
import struct
import sys
import zlib

PVH_NOTE_TYPE = 18  # XEN_ELFNOTE_PHYS32_ENTRY


def die(msg):
    sys.stderr.write("extract-vmlinux: %s\n" % msg)
    sys.exit(1)


def payload(image):
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        die("not a bzImage (no HdrS boot header)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < 0x208:
        die("boot protocol %#x is older than 2.08: no payload_offset" % version)
    setup_sects = image[0x1f1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if start + length > len(image):
        die("payload (%d bytes at %d) runs past the end of the image" % (length, start))
    return image[start:start + length]


def decompress(data):
    if data.startswith(b"\xfd7zXZ\x00"):
        # The stream is followed by the 4-byte uncompressed size: the decompressor stops at
        # the end of the stream and leaves it alone.
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if data.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31).decompress(data)  # one gzip member, then stop
    if data.startswith(b"\x5d\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    die("payload compression %s is not supported (xz, gzip and lzma are)" % data[:4].hex())


def has_pvh_note(elf):
    """True when an ELF64 PT_NOTE segment holds the Xen PHYS32_ENTRY note."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == PVH_NOTE_TYPE:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def main():
    if len(sys.argv) != 3:
        die("usage: extract-vmlinux.py BZIMAGE OUTPUT")
    with open(sys.argv[1], "rb") as f:
        image = f.read()
    elf = decompress(payload(image))
    if elf[:4] != b"\x7fELF":
        die("the decompressed payload is not an ELF file")
    if not has_pvh_note(elf):
        die("the vmlinux has no PVH entry note (CONFIG_PVH): QEMU cannot boot it directly")
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "wb") as f:
        f.write(elf)
    os.replace(tmp, sys.argv[2])


if __name__ == "__main__":
    main()

"""Rewrite an unsigned APK so that its stored entries are aligned: native libraries (`lib/**.so`)
at 16 KiB, every other stored entry at 4 bytes.

Android 15 devices with 16 KiB pages map an uncompressed library straight from the APK only
when its data starts on a 16 KiB boundary (and its ELF LOAD segments are 16 KiB-aligned, which
ORT's libraries are). Build-tools 35's `zipalign -P 16` does this; Debian's zipalign knows only
4 KiB pages (`-p`), so this script pads each local header's extra field itself, with the same
0xD935 "alignment" extra field that zipalign and apksigner write.

    python3 samples/android/ci/align_apk.py IN.apk OUT.apk
    python3 samples/android/ci/align_apk.py --check APK      # exit 1 naming the first misaligned entry
"""

from __future__ import annotations

import struct
import sys
import zipfile

LIB_ALIGN = 16384  # the largest page size Android supports
ALIGN = 4  # what the package manager wants of every other stored entry (resources.arsc above all)
_ALIGNMENT_EXTRA = 0xD935  # header id of the extra field apksig writes: u16 alignment, then zero padding


def alignment(name: str) -> int:
    """Where entry `name`'s data must start if it is stored uncompressed.

    Example:
        >>> alignment("lib/arm64-v8a/libonnxruntime.so"), alignment("resources.arsc")
        (16384, 4)
    """
    return LIB_ALIGN if name.startswith("lib/") and name.endswith(".so") else ALIGN


def data_offset(apk: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The file offset of an entry's data: after its local header, whose extra field may differ from the central one."""
    apk.fp.seek(info.header_offset)
    header = apk.fp.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def align(src: str, dst: str) -> None:
    """Copy every entry of `src` to `dst` in order, padding stored entries to their alignment."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            out.compress_type, out.external_attr, out.create_system = info.compress_type, info.external_attr, 0
            if info.compress_type == zipfile.ZIP_STORED:
                start = zout.fp.tell() + 30 + len(info.filename.encode())
                pad = -(start + 6) % alignment(info.filename)  # 6: the extra field's own header and value
                out.extra = struct.pack("<HHH", _ALIGNMENT_EXTRA, 2 + pad, alignment(info.filename)) + bytes(pad)
            zout.writestr(out, data)


def check(path: str) -> str | None:
    """The first stored entry whose data is not on its boundary, or a compressed library; None when all are right."""
    with zipfile.ZipFile(path) as apk:
        for info in apk.infolist():
            lib = alignment(info.filename) == LIB_ALIGN
            if lib and info.compress_type != zipfile.ZIP_STORED:
                return f"{info.filename} is compressed; native libraries must be stored"
            if info.compress_type == zipfile.ZIP_STORED and data_offset(apk, info) % alignment(info.filename):
                return (
                    f"{info.filename} starts at {data_offset(apk, info)}, not a multiple of {alignment(info.filename)}"
                )
    return None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        problem = check(sys.argv[2])
        if problem:
            sys.exit(f"align_apk: {problem}")
    elif len(sys.argv) == 3:
        align(sys.argv[1], sys.argv[2])
    else:
        sys.exit("usage: align_apk.py IN.apk OUT.apk | align_apk.py --check APK")

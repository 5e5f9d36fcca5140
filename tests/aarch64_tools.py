"""The aarch64 cross compiler and qemu that the kernel tests build and run ARM code with, and the mark that skips a
test where this machine lacks them (apt: g++-aarch64-linux-gnu qemu-user-static; .ci/run installs both)."""

from __future__ import annotations

import shutil

import pytest

CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
needs_aarch64 = pytest.mark.skipif(
    CROSS is None or QEMU is None,
    reason="no aarch64 cross compiler or qemu (apt: g++-aarch64-linux-gnu qemu-user-static)",
)

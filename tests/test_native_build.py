"""runtimes/native.py: a machine that cannot build a bundle's kernel is refused in one line naming the export option
that does without it, and nothing is left behind."""

from __future__ import annotations

import pytest

from edgemfm.errors import BundleError
from edgemfm.runtimes import native


@pytest.mark.parametrize(
    "kernel, way_out",
    [("int8_cache", "--kv-cache float"), ("matmul_int4", "--kernels ort"), ("attention", "--kernels ort")],
)
def test_a_missing_compiler_is_one_line_naming_the_export_option_that_avoids_it(kernel, way_out, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMFM_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(BundleError) as error:
        native.build(kernel)
    message = str(error.value)
    assert "\n" not in message and "no-such-compiler" in message and way_out in message
    assert not any(tmp_path.rglob("*"))

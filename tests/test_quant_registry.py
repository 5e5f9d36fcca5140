"""The quantization registry: schemes declared as data route every unit; unknown methods are refused."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest

from edgemfm.errors import ConfigError
from edgemfm.quantizers import registry
from edgemfm.quantizers.registry import Scheme
from edgemfm.recipe import QuantSpec, Recipe, Rule
from edgemfm.records import from_dict


@contextmanager
def _toy():
    """A one-method scheme registered for the block only; its `apply` records what it was given."""
    calls = []

    def apply(model, units, spec, ctx):
        calls.append(([u.name for u in units], spec))
        return model

    scheme = registry.register(Scheme("toy", "weight-only", ("toy",), ("MatMul",), order=15, apply=apply))
    try:
        yield scheme, calls
    finally:
        registry.unregister("toy")


def test_a_registered_toy_method_is_dispatched_and_removed_after(tmp_path):
    import onnx
    from test_quantizers import _one_matmul

    from edgemfm.profiles import load_profile
    from edgemfm.quantizers import weight_only
    from edgemfm.quantizers.apply import plan_passes, quantize_component
    from edgemfm.quantizers.context import Context
    from edgemfm.quantizers.units import Unit

    onnx.save(_one_matmul(np.ones((64, 64), np.float32)), str(tmp_path / "d.onnx"))
    with _toy() as (scheme, calls):
        spec = QuantSpec(bits=4, group_size=32, method="toy")
        ctx = Context([], load_profile("pi5"), tmp_path)
        quantize_component(tmp_path / "d.onnx", tmp_path / "q.onnx", "d", Recipe((Rule("*", spec),)), ctx)
        assert len(calls) == 1 and calls[0][1] == spec
        # its `order` places it between weight_only (10) and clip_search (20); the Gemm it does not take is named
        units = [Unit(f"d/{i}", f"n{i}", op, "w", (64, 64)) for i, op in enumerate(("MatMul", "MatMul", "Gemm"))]
        rtn = QuantSpec(bits=4, group_size=32, method="rtn")
        passes, floats = plan_passes(units, Recipe((Rule("d/0", spec), Rule("d/1", rtn), Rule("*", spec))), 32)
        assert [s for s, _, _ in passes] == [weight_only.SCHEME, scheme]
        assert floats == {"d/2": "Gemm: weight-only toy int4 covers MatMul, Gather and Conv"}
    with pytest.raises(ConfigError, match="'toy' is unknown"):
        registry.check_method("toy")


def test_a_method_no_scheme_provides_is_refused_naming_the_allowed_ones(tmp_path):
    import onnx
    from test_quantizers import _one_matmul

    from edgemfm.profiles import load_profile
    from edgemfm.quantizers.apply import quantize_component
    from edgemfm.quantizers.context import Context

    allowed = "dynamic, minmax, percentile, entropy, rtn, k_quant, gptq, hqq, clip_search, gptq_act_order, fp16"
    with pytest.raises(ConfigError, match=f"^quantization method 'nope' is unknown; allowed: {allowed}$"):
        registry.check_method("nope")
    # a recipe read from a file: refused where it is applied (the core records import no quantizer)
    recipe = from_dict(Recipe, {"rules": [{"pattern": "*", "spec": {"bits": 4, "method": "nope"}}]})
    onnx.save(_one_matmul(np.ones((64, 64), np.float32)), str(tmp_path / "d.onnx"))
    with pytest.raises(ConfigError, match="'nope' is unknown"):
        quantize_component(
            tmp_path / "d.onnx", tmp_path / "q.onnx", "d", recipe, Context([], load_profile("pi5"), tmp_path)
        )


def test_a_method_two_schemes_provide_is_refused():
    with _toy() as (scheme, _), pytest.raises(ConfigError, match="'rtn' is already provided by 'weight_only'"):
        registry.register(Scheme("clash", "weight-only", ("rtn",), ("MatMul",), order=16, apply=scheme.apply))


def test_the_registry_loads_without_onnx_or_torch():
    """The registry and the scheme modules stay light: a recipe's methods are checked without the toolchain."""
    code = (
        "import sys; from edgemfm.quantizers.registry import check_method; check_method('gptq_act_order');"
        "heavy = sorted({'torch', 'transformers', 'onnx', 'onnxruntime.quantization'} & set(sys.modules));"
        "print('HEAVY', heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout

"""fp16: the whole component graph in half precision, inputs and outputs kept float32.

ONNX Runtime's float16 converter does it; ops without fp16 kernels (and the ones that overflow in
fp16: reductions of large sums) are left in float32 with casts around them. A component is either
fp16 or integer-quantized, never both: casts between the two cost more than they save.

Example:
    >>> model = apply(onnx.load("v.onnx"), units, QuantSpec(bits=16), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgemfm.quantizers.registry import Scheme
from edgemfm.quantizers.units import Unit
from edgemfm.recipe import QuantSpec

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context


def apply(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """The component in fp16 with float32 inputs/outputs; returns the new ModelProto."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # The converter's default block list only: blocking RMSNorm's ReduceMean/Pow/Sqrt as well made
    # it write a decoder whose logits were all zeros (measured on the default model).
    return convert_float_to_float16(model, keep_io_types=True)


SCHEME = Scheme(
    name="fp16",
    family="fp16",
    methods=("fp16",),
    ops=(),
    order=70,  # last: the integer passes never see a half-precision graph
    apply=apply,
    bits=(16,),
    any_method_ops=("MatMul", "Gemm", "Conv", "Gather"),  # bits 16 decides, whatever the method
    alone=True,
)

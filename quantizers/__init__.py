"""Quantization of a bundle's ONNX components: int8 (dynamic, static QDQ), int4/int8 weight-only
(MatMulNBits), fp16, per-device presets and a hierarchy-aware mixed-precision planner.

One file per method (`dynamic_int8`, `static_int8`, `weight_only`, `fp16`); the presets are rows of
`presets.TARGETS`; `quantize.quantize` is the one verb the exporter calls. This package is part of
the export toolchain (it imports onnx and onnxruntime.quantization); the runtime never imports it.

Example:
    >>> from edgemfm.quantizers.presets import recipe_for
    >>> from edgemfm.profiles import load_profile
    >>> recipe_for(load_profile("jetson"), "int8").rules[0].spec.method
    'percentile'
"""

"""Quantization of a bundle's ONNX components: int8 (dynamic, static QDQ), int4/int8 weight-only
(MatMulNBits), fp16, per-device presets and a hierarchy-aware mixed-precision planner.

One file per scheme (`dynamic_int8`, `static_int8`, `weight_only`, `clip_search`, `gptq`,
`conv_weight_only`, `fp16`), each declaring what it provides as a `registry.Scheme`; `apply` routes
every unit from those records. The presets are rows of `presets.TARGETS`; `quantize.quantize` is the
one verb the exporter calls. This package is part of the export toolchain (onnx and
onnxruntime.quantization, imported inside the functions); the runtime reads only `registry`, through
`QuantSpec`'s method check. Structural pruning of torch checkpoints lives in `edgemfm.pruners`.

Example:
    >>> from edgemfm.quantizers.presets import recipe_for
    >>> from edgemfm.profiles import load_profile
    >>> recipe_for(load_profile("jetson"), "int8").rules[0].spec.method
    'percentile'
"""

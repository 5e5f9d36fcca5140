"""Named precisions per kind of device: the profile decides which kernels exist.

A device's kind is found from its most preferred execution provider (data in its profile, never
its name); each kind is one row of `TARGETS`, and `recipe_for(profile, precision)` turns a row
into a `Recipe`:

| kind        | first provider                  | int8                                   | int4                                        |
|-------------|---------------------------------|----------------------------------------|---------------------------------------------|
| gpu-tensorrt| TensorRT / CUDA                 | symmetric QDQ, percentile calibration  | MatMulNBits, fp32 compute                   |
| npu-android | QNN / NNAPI                     | symmetric QDQ, percentile calibration; the text decoder w8a16 | MatMulNBits, int8 compute (8da4w) |
| arm-cpu     | XNNPACK                         | MatMulNBits int8 g32, int8 compute     | MatMulNBits + zero points, int8 compute (dot product) |
| x86-cpu     | CPU                             | MatMulNBits int8 g32, int8 compute     | MatMulNBits + zero points, int8 compute (VNNI/AVX2)   |

Every int4 MatMul gets `clip_search` scales (searched per block against calibration activations);
on the CPUs each block keeps its own [min, max] range with a zero point. The head (and the token table
it shares) takes blocks of HEAD_GROUP where the profile has them.

On the CPUs, int8 MatMuls are int8 blocks whose activations are smoothed (SmoothQuant) and
quantized per block of 32 at run time, not per tensor (`quantize_dynamic`, still available to
recipes as method `dynamic`): one outlier channel of a real LLM's hidden state spoils a whole
tensor's scale (SmolLM2-135M: perplexity +69% per tensor, +1.4% per block, -0.2% smoothed).
Convolutions get int8 weights per output channel (weight-only).
Embedding tables get weight-only int8 rows (int8) or int4 blocks (int4) whatever the kind.

On the NPUs the text decoder's static QDQ keeps int8 weights but 16-bit activations (w8a16, as
Qualcomm's own LLM exports run on Hexagon): with 8-bit per-tensor activations the demo model's
decoder came out at 3.7 dB SQNR and lost every answer; the encoders stay w8a8.

Example:
    >>> from edgemfm.profiles import load_profile
    >>> recipe_for(load_profile("pi5"), "int4").spec_for("text_decoder/layers.0/mlp.up_proj")
    QuantSpec(bits=4, group_size=64, symmetric=False, method='clip_search', activation_bits=8)
    >>> recipe_for(load_profile("pi5"), "int4").spec_for("text_decoder/tied_head").group_size
    32
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgemfm.errors import InputError
from edgemfm.profiles import DeviceProfile
from edgemfm.recipe import FLOAT32, QuantSpec, Recipe, Rule

PRECISIONS = ("fp32", "fp16", "int8", "int4", "auto")
PREFERRED_GROUP = 64  # int4 block size when the profile takes it: 32 costs 0.5 more bits per weight in scales
# the int4 head's largest group: the logits' projection, whose int4 error costs the most. SmolLM2-135M, the rest at g64:
# perplexity 27.70 against 28.57 on eval_en.txt, 21.61 / 47.46 against 22.21 / 50.85 on 2,047 tokens of two other
# texts, for 1.9 MiB more (BENCHMARKS.md, the SmolLM2 side by side); ExecuTorch's pte int4 head takes the same group.
# More roles at g32 measured (before clip_search's refit): down_proj 27.69 / 21.18 / 46.41 for 1.8 MiB more; q/k/v and o
# 26.89 / 20.89 / 48.15 (+1.8); down_proj and q/k/v 27.45 / 20.70 / 46.56 (+2.9, 4% slower decode). With the refit they
# add less than it: the head alone 26.43 / 20.41 / 44.24; down_proj and q/k/v too 26.62 / 19.89 / 43.63, at 82.4 MiB
HEAD_GROUP = 32
HEADS = ("text_decoder/lm_head", "text_decoder/tied_head")  # the head's unit, untied or sharing the token table


@dataclass(frozen=True)
class Target:
    kind: str
    providers: tuple[str, ...]  # a profile whose first execution provider is one of these
    int8: QuantSpec
    int4: QuantSpec  # group_size 0 here: filled from the profile
    int8_decoder: QuantSpec | None = None  # the text decoder's int8 where it differs from the encoders'


_QDQ = QuantSpec(bits=8, symmetric=True, method="percentile", activation_bits=8)
# 16 bits hold a decoder's outlier channels whole: MinMax ranges, where percentile would clip them
_QDQ16 = replace(_QDQ, activation_bits=16, method="minmax")
# int8 compute (accuracy_level 4), smoothed: on SmolLM2-135M faster than fp32 and as accurate; fp32 compute
# is slower than fp32 (ORT de-quantizes int8 blocks at every call). Blocks of 32: activations are quantized
# per block too; 32 beat 128. BENCHMARKS.md, result quantization-smollm2.
_BLOCKS8 = QuantSpec(bits=8, group_size=32, symmetric=True, method="rtn", activation_bits=8)
# int4: searched scales beat ORT's round-to-nearest and GPTQ on SmolLM2-135M at g64; on the CPUs each
# block's own range with a zero point beats the symmetric grid at the same speed in MLAS's int8 path
# (BENCHMARKS.md, result quantization-smollm2)
_BLOCKS4 = QuantSpec(bits=4, symmetric=False, method="clip_search", activation_bits=8)
TARGETS = (
    Target(
        "gpu-tensorrt",
        ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
        _QDQ,
        QuantSpec(bits=4, method="clip_search", activation_bits=0),
    ),
    Target(
        "npu-android",
        ("QNNExecutionProvider", "NnapiExecutionProvider"),
        _QDQ,
        QuantSpec(bits=4, method="clip_search", activation_bits=8),
        int8_decoder=_QDQ16,
    ),
    Target("arm-cpu", ("XnnpackExecutionProvider",), _BLOCKS8, _BLOCKS4),
    Target("x86-cpu", ("CPUExecutionProvider",), _BLOCKS8, _BLOCKS4),
)


def target_of(profile: DeviceProfile) -> Target:
    """The row of `TARGETS` for a profile's most preferred execution provider."""
    first = profile.execution_providers[0]
    for t in TARGETS:
        if first in t.providers:
            return t
    raise InputError(
        f"{profile.name}: no quantization target for provider {first!r}; known: {', '.join(p for t in TARGETS for p in t.providers)}"
    )


def group_size(profile: DeviceProfile) -> int:
    """The int4 block size: PREFERRED_GROUP when the profile takes it, else its largest."""
    return PREFERRED_GROUP if PREFERRED_GROUP in profile.group_sizes else max(profile.group_sizes)


def specs(profile: DeviceProfile) -> dict[int, QuantSpec]:
    """bits -> the spec this device runs best at those bits (16 only where it has fp16)."""
    t = target_of(profile)
    out = {32: None}
    if 8 in profile.weight_bits:
        out[8] = t.int8
    if 4 in profile.weight_bits:
        out[4] = replace(t.int4, group_size=group_size(profile))
    if 16 in profile.weight_bits:
        out[16] = QuantSpec(bits=16, method="fp16")
    return out


def recipe_for(profile: DeviceProfile, precision: str) -> Recipe:
    """The recipe of a named precision (not `auto`: the planner builds that one) on `profile`.

    Example:
        >>> from edgemfm.profiles import load_profile
        >>> recipe_for(load_profile("jetson"), "int8").rules[-1].spec.method
        'percentile'
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not supported; allowed: {', '.join(PRECISIONS)}")
    assert precision != "auto", "the planner builds the auto recipe"
    if precision == "fp32":
        return FLOAT32
    bits = {"fp16": 16, "int8": 8, "int4": 4}[precision]
    available = specs(profile)
    if bits not in available:
        allowed = ["fp32", "auto", *(p for p, b in (("fp16", 16), ("int8", 8), ("int4", 4)) if b in available)]
        raise InputError(f"precision {precision!r} has no kernels on {profile.name}; allowed: {', '.join(allowed)}")
    decoder = target_of(profile).int8_decoder if bits == 8 else None
    finer = bits == 4 and HEAD_GROUP in profile.group_sizes and HEAD_GROUP < available[4].group_size
    heads = [Rule(unit, replace(available[4], group_size=HEAD_GROUP)) for unit in HEADS] if finer else []
    return Recipe(rules=(*([Rule("text_decoder/*", decoder)] if decoder else []), *heads, Rule("*", available[bits])))

"""Qwen2.5-VL: Qwen2-VL's layout with a windowed vision tower (RMSNorm, gated MLP, full attention
only in `fullatt_block_indexes`). Split and exported by exporters/qwen2_vl.py, which reads the
window from the vision config and keeps dynamic resolution (window masks from patch positions).

Example:
    >>> from edgemfm.exporters.qwen2_5_vl import FAMILY
    >>> FAMILY.model_types
    ('qwen2_5_vl',)
"""

from __future__ import annotations

from edgemfm.exporters import qwen2_vl
from edgemfm.exporters.family import Family
from edgemfm.exporters.visual_tokens import pixel_budget
from edgemfm.pruners.checkpoint import TRANSFORMERS

FAMILY = Family(
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    architectures=("Qwen2_5_VLForConditionalGeneration",),
    tolerance=1e-4,
    load=qwen2_vl.load,
    split=qwen2_vl.split,
    media_knobs=qwen2_vl.MEDIA_KNOBS,  # the same dynamic-resolution tower: a pixel budget
    finetune=qwen2_vl.FINETUNING,  # the same merger on the same kind of tower
    prunable=TRANSFORMERS,
    visual_tokens=pixel_budget,
)

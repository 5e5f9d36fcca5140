"""What a quantization scheme is given besides the graph: calibration feeds, the device, scratch space.

Example:
    >>> ctx = Context(feeds=[{"input_ids": np.array([[1, 2, 3]])}], profile=load_profile("pi5"), scratch=Path("/tmp"))  # doctest: +SKIP
    >>> next(iter(FeedReader(ctx.feeds)))["input_ids"].shape                                                    # doctest: +SKIP
    (1, 3)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgemfm.profiles import DeviceProfile

Feeds = dict[str, np.ndarray]


@dataclass
class Context:
    feeds: Sequence[Feeds]  # calibration inputs of this component, through the real pre-processing
    profile: DeviceProfile  # decides kernel details a recipe leaves open (e.g. reduce_range on AVX2)
    scratch: Path  # a directory the scheme may write temporary graphs to
    # statistics of the component's float graph, by tensor name (GPTQ's Hessians): the planner
    # quantizes the same float graph once per group, and they are the costly part
    cache: dict[str, Any] = field(default_factory=dict)


class FeedReader(CalibrationDataReader):
    """ONNX Runtime's calibration protocol over a list of feeds (restartable, copyable, sliceable).

    `set_range` is what `quantize_static` calls under its `CalibStridedMinMax` option: it collects
    the slices one after the other and merges their ranges (histograms), so feeds of different
    shapes (Qwen2-VL's patch counts) never meet in one array.
    """

    def __init__(self, feeds: Sequence[Feeds]):
        self.feeds = list(feeds)
        self.at, self.end = 0, len(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def get_next(self) -> Feeds | None:
        if self.at >= self.end:
            return None
        self.at += 1
        return self.feeds[self.at - 1]

    def set_range(self, start_index: int, end_index: int) -> None:
        self.at, self.end = start_index, min(end_index, len(self.feeds))

    def rewind(self) -> None:
        self.at, self.end = 0, len(self.feeds)

    def __deepcopy__(self, memo: dict) -> FeedReader:
        return FeedReader(copy.copy(self.feeds))  # the arrays are read-only: share them

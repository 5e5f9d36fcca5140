"""Position ids the decoder and encoders need, computed from the manifest's description alone.

- `patch_positions`: each vision patch's (row, col) in the block-major order of the patches, for a
  vision tower with 2-D rotary embeddings (Qwen2-VL).
- `mrope_positions`: multimodal RoPE (Qwen2-VL): text tokens advance one position on all three
  axes; an image's rows take (t, row, col) positions from its grid, all offset by the position
  where the image starts, and the text after it resumes past the image's largest extent.

Example:
    >>> mrope_positions([2, (1, 2, 3), 1])[0].tolist()
    [[0, 1, 2, 2, 2, 2, 2, 2, 5], [0, 1, 2, 2, 2, 3, 3, 3, 5], [0, 1, 2, 3, 4, 2, 3, 4, 5]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def patch_positions(grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """int64 [grid_h * grid_w, 2]: (row, col) of each patch, merge x merge blocks contiguous.

    Example:
        >>> patch_positions(2, 4, 2)[:, 1].tolist()
        [0, 1, 0, 1, 2, 3, 2, 3]
    """
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    block = (grid_h // merge, merge, grid_w // merge, merge)
    order = [a.reshape(block).transpose(0, 2, 1, 3).reshape(-1) for a in (rows, cols)]
    return np.stack(order, axis=-1).astype(np.int64)


def mrope_positions(segments: Sequence[int | tuple[int, int, int]]) -> tuple[np.ndarray, int]:
    """int64 [3, seq] positions of a sequence of text runs (a token count) and images ((t, h, w)
    in decoder rows), and the next text position (where generation continues)."""
    pieces, start = [], 0
    for seg in segments:
        if isinstance(seg, int):
            pieces.append(np.broadcast_to(np.arange(start, start + seg), (3, seg)))
            start += seg
        else:
            t, h, w = seg
            grid = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")).reshape(3, -1)
            pieces.append(grid + start)
            start += max(h, w)  # images are single frames (t == 1): the text resumes after the larger side
    return np.concatenate(pieces, axis=1).astype(np.int64), start


def mrope_prompt(segments: Sequence[int | tuple[int, int, int]]) -> tuple[np.ndarray, int]:
    """The prompt's 3-D positions [3, seq] and the shift of every later token's position
    (generated token at absolute position p sits at p + shift on all three axes).

    Example:
        >>> mrope_prompt([2, (1, 2, 3), 1])[1]
        -3
    """
    positions, next_position = mrope_positions(segments)
    return positions, next_position - positions.shape[1]


def decoder_positions(position: int, seq: int, mrope: tuple[np.ndarray, int] | None) -> np.ndarray:
    """[1, seq] positions of `seq` tokens from absolute `position`, or [3, 1, seq] with M-RoPE
    (`mrope` = `mrope_prompt`'s result): the prompt's own 3-D positions, then every axis at the
    absolute position plus the shift.

    Example:
        >>> decoder_positions(8, 2, mrope_prompt([2, (1, 2, 3), 1]))[:, 0].tolist()
        [[5, 6], [5, 6], [5, 6]]
    """
    at = np.arange(position, position + seq, dtype=np.int64)
    if mrope is None:
        return at[None]
    prompt, shift = mrope
    n = prompt.shape[1]
    return np.where(at < n, prompt[:, np.minimum(at, n - 1)], at + shift)[:, None]

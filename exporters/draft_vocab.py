"""A draft's head over a vocabulary subset (`export --draft-vocab N`): the head reads N rows, not all.

A draft bundle proposes tokens that its target checks, so it need not score every token: FR-Spec
(Zhao et al., arXiv 2502.14856) restricts the draft's head to the frequent ones. A small decoder's
head is a large share of the bytes a step reads (SmolLM2-135M's tied 49152 x 576 table is a fifth
of the whole model), and a draft that keeps few layers reads it at every proposal. The subset is
the N lowest token ids: a byte-level BPE numbers its tokens in merge order, most frequent first, so
no corpus is needed; the end tokens are always kept, so a draft can still stop.

    before:  h ──► MatMulNBits(B [V, K/g, g·bits/8], scales, zp) ──► logits [.., V]
    after:   h ──► MatMulNBits(B[ids], scales[ids], zp[ids], N=len(ids)) ──► logits [.., len(ids)]
             the manifest's `generation.head_subset` names the ids; the runtime spreads each row
             back over the whole vocabulary (-inf elsewhere): `runtimes/generation.py`

The rows are copied into the decoder's own graph; a tied table shared with the token embedding
(`quantizers/tied_table.py`) stays whole for the lookup, which must embed any token the target emits.
The target checks every proposal, so a draft with a subset head changes how often proposals pass,
never the answer.

Example:
    >>> manifest = restrict_head(stage, manifest, 8192)           # doctest: +SKIP
    >>> len(manifest.generation.head_subset.ids)                   # doctest: +SKIP
    8192
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.errors import ExportError, InputError
from edgemfm.manifest import HeadSubset, Manifest

# head op -> its weight inputs cut along the vocabulary, each with the axis the vocabulary is on (None: read
# from the node: FusedMatMul's transB); the other inputs (activations) pass unchanged
WEIGHTS = {"MatMulNBits": {1: 0, 2: 0, 3: 0, 5: 0}, "MatMul": {1: 1}, "FusedMatMul": {1: None}}
LOGITS = "logits"


def choose_ids(vocab_size: int, size: int, keep: tuple[int, ...]) -> tuple[int, ...]:
    """The `size` lowest token ids (BPE merge order: most frequent first) with every id in `keep`, sorted.

    Example:
        >>> choose_ids(10, 4, keep=(9,))
        (0, 1, 2, 3, 9)
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < vocab_size:
        raise InputError(
            f"draft vocab {size!r} is not allowed; allowed: 1 to {vocab_size - 1} (the vocabulary is {vocab_size})"
        )
    return tuple(sorted(set(range(size)) | {i for i in keep if 0 <= i < vocab_size}))


def restrict_head(stage: Path, manifest: Manifest, size: int) -> Manifest:
    """Cut the decoder's head in `stage` to `size` tokens (`choose_ids`); the manifest saying which."""
    import onnx

    name = manifest.generation.decoder
    component = manifest.components[name]
    path = stage / component.file
    model = onnx.load(str(path), load_external_data=False)  # the other weights stay where they are
    head = _head(model)
    vocab_size = _vocab_size(model, head, stage)
    ids = choose_ids(vocab_size, size, manifest.tokenizer.eos_token_ids)
    removed, added = _cut(model, head, np.asarray(ids), vocab_size, stage)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    outputs = tuple(replace(o, shape=(*o.shape[:-1], len(ids))) if o.name == LOGITS else o for o in component.outputs)
    component = replace(component, outputs=outputs, weight_bytes=component.weight_bytes - removed + added)
    generation = replace(manifest.generation, head_subset=HeadSubset(vocab_size=vocab_size, ids=ids))
    return replace(manifest, components={**manifest.components, name: component}, generation=generation)


def _head(model: Any) -> Any:
    """The node writing the logits, which must be one of the matrix products `WEIGHTS` knows."""
    node = next((n for n in model.graph.node if LOGITS in n.output), None)
    if node is None or node.op_type not in WEIGHTS:
        found = "nothing" if node is None else node.op_type
        raise ExportError(
            f"--draft-vocab: the decoder's {LOGITS!r} is written by {found}; allowed: {', '.join(WEIGHTS)}"
        )
    return node


def _axis(node: Any, index: int) -> int:
    axis = WEIGHTS[node.op_type][index]
    if axis is None:  # FusedMatMul: B [V, K] when transposed, else [K, V]
        trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans else 1
    return axis


def _vocab_size(model: Any, head: Any, stage: Path) -> int:
    if head.op_type == "MatMulNBits":
        return next(a.i for a in head.attribute if a.name == "N")
    return int(_array(model, head.input[1], stage).shape[_axis(head, 1)])


def _array(model: Any, name: str, stage: Path) -> np.ndarray:
    from onnx import numpy_helper

    init = next((t for t in model.graph.initializer if t.name == name), None)
    if init is None:
        raise ExportError(
            f"--draft-vocab: the head's weight {name!r} is not a stored initializer; allowed: a constant head"
        )
    return numpy_helper.to_array(init, base_dir=str(stage))


def _cut(model: Any, head: Any, ids: np.ndarray, vocab_size: int, stage: Path) -> tuple[int, int]:
    """Replace the head's weights by their `ids` rows (new initializers); bytes removed and added."""
    from onnx import helper, numpy_helper

    removed = added = 0
    for index in WEIGHTS[head.op_type]:
        if index >= len(head.input) or not head.input[index]:
            continue  # MatMulNBits without zero points or bias
        old = head.input[index]
        array = _array(model, old, stage)
        cut = _rows(array, _axis(head, index), ids, vocab_size)
        head.input[index] = f"{old}.draft_vocab"
        model.graph.initializer.append(numpy_helper.from_array(cut, head.input[index]))
        added += cut.nbytes
        if not any(old in n.input for n in model.graph.node):  # a tied table read by nothing else here
            kept = [t for t in model.graph.initializer if t.name != old]
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
            removed += array.nbytes
    if head.op_type == "MatMulNBits":
        kept_attributes = [a for a in head.attribute if a.name != "N"]
        del head.attribute[:]
        head.attribute.extend([*kept_attributes, helper.make_attribute("N", len(ids))])
    _shrink_logits(model, len(ids))
    return removed, added


def _rows(array: np.ndarray, axis: int, ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """The vocabulary rows `ids` of a weight along `axis`; a flat one (MatMulNBits' scales and zero
    points may be [V * blocks]) by its V equal parts."""
    if array.ndim == 1 and array.shape[0] != vocab_size:
        return np.ascontiguousarray(array.reshape(vocab_size, -1)[ids].reshape(-1))
    return np.ascontiguousarray(np.take(array, ids, axis=axis))


def _shrink_logits(model: Any, size: int) -> None:
    """The graph output's declared last axis: the subset's width (a named axis is left as it is)."""
    for out in model.graph.output:
        if out.name == LOGITS and out.type.tensor_type.shape.dim:
            dim = out.type.tensor_type.shape.dim[-1]
            if dim.HasField("dim_value"):
                dim.dim_value = size

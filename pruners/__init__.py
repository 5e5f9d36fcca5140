"""Structural pruning of torch checkpoints: whole blocks, KV groups with their heads, MLP channels.

It works on a transformers checkpoint before export (not on ONNX graphs, which is why it is not
among the quantizers): `structure` finds and slices a family's stacks, `importance` scores them on
calibration data (`data` builds the calls), `prune` is the verb, `recovery` distils the pruned
model back toward the unpruned one. The host toolchain only: it imports torch and transformers.

Example:
    >>> from edgemfm.pruners.prune import parse_spec
    >>> parse_spec("mlp=0.2").mlp
    0.2
"""

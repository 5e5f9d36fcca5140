"""An online Hadamard on each MLP's down_proj input before 8da8w (QuaRot's R4), on top of the residual rotation.

down_proj reads SiLU(gate) * up, a row of `intermediate_size` values whose few massive entries (SmolLM2's, the
demo's) set the row's dynamic int8 scale at run time; the residual stream's R (pte_rotation.py) does not reach it.
A Hadamard H (orthonormal) spreads a row's energy over all its entries, and W_down <- W_down H keeps the float
output as it was:

    gate, up ─► SiLU(gate) * up = x ─► x H ─► Linear(W_down H)     (x H (W_down H)^T = x W_down^T)

H is a Kronecker product H_outer (x) H_inner of two small Hadamards, so x H is two small matmuls on x seen as
[outer, inner] (H_outer^T X H_inner), not one width x width: for SmolLM2's 1536 = 12 x 128 (Paley's 12, Sylvester's
128) about a quarter of down_proj's own multiply-adds, in float. Hadamard matrices are known for 1, 2, 4 x n; built
here: powers of two (Sylvester) and 12 times them (Paley's 12 x Sylvester); a width with no such factorization is
left as it was, and pte_rotation says so.

Example:
    >>> factors(1536)[0].shape, factors(1536)[1].shape  # doctest: +SKIP
    (torch.Size([12, 12]), torch.Size([128, 128]))
"""

from __future__ import annotations

from typing import Any

INNER = 128  # the inner Sylvester factor at most: its matmul is width x INNER multiply-adds per token
DOWN_PROJ = "mlp.down_proj"


def hadamard(n: int) -> Any:
    """The orthonormal float64 [n, n] Hadamard matrix (entries +-1/sqrt(n)) for n a power of two or 12 times one;
    None for another n.

    Example:
        >>> h = hadamard(12)  # doctest: +SKIP
        >>> bool((h @ h.T - torch.eye(12, dtype=torch.float64)).abs().max() < 1e-12)  # doctest: +SKIP
        True
    """
    import torch

    power = n & -n
    if n < 1 or n // power not in (1, 3) or (n // power == 3 and power < 4):
        return None
    h = _paley12() if n // power == 3 else torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:  # Sylvester's doubling
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h / n**0.5


def _paley12() -> Any:
    """Paley's construction for q = 11 (q = 3 mod 4): I + [[0, 1], [-1, Q]], Q the quadratic-residue matrix mod 11."""
    import torch

    residues = {(i * i) % 11 for i in range(1, 11)}
    chi = [0] + [1 if a in residues else -1 for a in range(1, 11)]
    s = torch.zeros(12, 12, dtype=torch.float64)
    s[0, 1:], s[1:, 0] = 1, -1
    s[1:, 1:] = torch.tensor([[chi[(j - i) % 11] for j in range(11)] for i in range(11)], dtype=torch.float64)
    return torch.eye(12, dtype=torch.float64) + s


def factors(width: int) -> tuple[Any, Any] | None:
    """(H_outer, H_inner), orthonormal float64, with H_outer (x) H_inner a Hadamard of `width` and H_inner the
    widest power of two up to INNER that leaves a known H_outer; None where there is none.

    Example:
        >>> [f.shape[0] for f in factors(96)]  # doctest: +SKIP
        [12, 8]
    """
    inner = min(width & -width, INNER)
    while inner >= 1:
        outer = hadamard(width // inner)
        if outer is not None:
            return outer, hadamard(inner)
        inner //= 2
    return None


def unrotatable(layers: Any) -> str | None:
    """Why the down_projs of `layers` get no online Hadamard (a width without one); None if they all can."""
    widths = {layer.get_submodule(DOWN_PROJ).in_features for layer in layers}
    missing = sorted(w for w in widths if factors(w) is None)
    return f"no Hadamard of down_proj's width {missing[0]} (built: 2^k, 12 x 2^k)" if missing else None


def rotate_down_projs(layers: Any) -> None:
    """Each layer's down_proj reads its input times a Hadamard H at run time, its weight W H (exact in float): in
    place, for `unrotatable(layers)` None.

    Example:
        >>> rotate_down_projs(unit.module.language_model.layers)  # doctest: +SKIP
    """
    import torch

    with torch.no_grad():
        for layer in layers:
            down = layer.get_submodule(DOWN_PROJ)
            outer, inner = factors(down.in_features)
            weight = down.weight.double() @ torch.kron(outer, inner)
            down.weight = torch.nn.Parameter(weight.to(down.weight.dtype), requires_grad=False)
            # as F.linear's weights (H^T): XNNPACK's fp32 linear on 2-D rows, where a matmul on [.., outer, inner]
            # lowers to a batched form its linear does not take
            down.register_buffer("hadamard_outer", outer.T.contiguous().to(down.weight.dtype), persistent=False)
            down.register_buffer("hadamard_inner", inner.T.contiguous().to(down.weight.dtype), persistent=False)
            down.register_forward_pre_hook(_online)


def _online(down: Any, args: tuple) -> tuple:
    """x H = H_outer^T X H_inner with x's row seen as X [outer, inner]: two float linears on 2-D rows, transposes."""
    import torch.nn.functional as F

    x = args[0]
    outer, inner = down.hadamard_outer.shape[0], down.hadamard_inner.shape[0]
    y = F.linear(x.reshape(-1, inner), down.hadamard_inner)  # X H_inner, a row of `inner` at a time
    y = F.linear(y.reshape(-1, outer, inner).transpose(1, 2).reshape(-1, outer), down.hadamard_outer)  # (.)^T H_outer
    return (y.reshape(-1, inner, outer).transpose(1, 2).reshape(x.shape), *args[1:])

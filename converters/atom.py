"""Atom (Zhao et al. 2024) W4A4: outlier channels reordered to the end and kept INT8, the rest
INT4 in groups, for weights and activations. Pure functions on float layers.

Per linear-input group (qkv shares input_layernorm's output, fc/gate share post_layernorm's,
dense and proj stand alone), the n_o channels with the largest calibration mean square
become outliers. perm [K] moves them last: reordered[:, j] = original[:, perm[j]]. Folds:
    qkv, fc/gate : norm weight -> weight[perm] plus `{norm}.reorder_index` = perm (the fused
                   RMSNorm-quantize step gathers x[:, perm]); weight columns -> W[:, perm]
    proj         : exact fold into the rows of fc and gate (their outputs come out reordered)
    dense        : columns W[:, perm] plus `attention.dense.reorder_index` (no exact fold: the
                   attention output mixes heads; the runtime's quantize step gathers)
"""

from __future__ import annotations

import torch

from lowbit.packing import outliers_last_permutation

# Linear-input groups: the input tensor tapped in calibration -> (linears, how perm is folded)
INPUT_GROUPS = {
    "qkv_in": ("attention.qkv",),
    "fc_in": ("mlp.fc", "mlp.gate"),
    "dense_in": ("attention.dense",),
    "proj_in": ("mlp.proj",),
}


def outlier_count(k: int, requested: int, group_size: int) -> int:
    """Outlier channels for an input of k channels: at least `requested` (capped at k), rounded
    up so that the k - n_o normal channels fill whole groups. E.g. k=576, 128 requested, group
    128 -> 192 (448 is not a multiple of 128; 384 is); k=1536 -> 128; k=4096 -> 128."""
    if requested < 0:
        raise ValueError(f"--outliers must be >= 0, found {requested}")
    if requested > k:
        raise ValueError(f"--outliers {requested} is larger than the input size {k}")
    kn = (k - requested) // group_size * group_size
    return k - kn


def permutations(meansq: dict[str, torch.Tensor], counts: dict[str, int]
                 ) -> dict[str, torch.Tensor]:
    return {name: outliers_last_permutation(meansq[name], counts[name]) for name in meansq}


def fold_layer(layer: dict[str, torch.Tensor], perms: dict[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """Apply the reorder permutations (keys qkv_in, fc_in, dense_in, proj_in) to a float layer.
    Exact: the layer computes the same function (the runtime gathers with reorder_index)."""
    out = dict(layer)
    p = {k: v.long() for k, v in perms.items()}
    out["input_layernorm.weight"] = layer["input_layernorm.weight"][p["qkv_in"]]
    out["input_layernorm.reorder_index"] = perms["qkv_in"].to(torch.int32)
    out["attention.qkv.weight"] = layer["attention.qkv.weight"][:, p["qkv_in"]]
    out["post_layernorm.weight"] = layer["post_layernorm.weight"][p["fc_in"]]
    out["post_layernorm.reorder_index"] = perms["fc_in"].to(torch.int32)
    pi = p["proj_in"]
    out["mlp.fc.weight"] = layer["mlp.fc.weight"][pi][:, p["fc_in"]]
    out["mlp.gate.weight"] = layer["mlp.gate.weight"][pi][:, p["fc_in"]]
    out["mlp.proj.weight"] = layer["mlp.proj.weight"][:, pi]
    out["attention.dense.weight"] = layer["attention.dense.weight"][:, p["dense_in"]]
    out["attention.dense.reorder_index"] = perms["dense_in"].to(torch.int32)
    return out


def permute_hessian(h: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    p = perm.long()
    return h[p][:, p]

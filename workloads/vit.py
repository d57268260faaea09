"""A small Vision Transformer (Dosovitskiy et al. 2021): MAE's encoder (He et al. 2021, §3) and DINO's backbone
(Caron et al. 2021).

Patch embedding by a p×p stride-p convolution, fixed 2-D sin-cos position embeddings, a class token,
pre-norm transformer blocks and a final LayerNorm, initialised as facebookresearch/mae's
`initialize_weights`. `forward` gives the features that kNN, the linear probe and the exported model
use: the mean patch token (``pool="mean"``, MAE) or the class token (``pool="cls"``, DINO);
`forward_visible` is the MAE encoder, which sees only the visible patches; `last_attention` the last
block's attention maps (DINO's pictures).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workloads.masks import visible_index

LN_EPS = 1e-6  # MAE's norm_layer=partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed_2d(dim: int, rows: int, cols: int) -> Tensor:
    """(rows·cols, dim) fixed position embeddings: half the channels encode the row, half the column.

    Each half is the 1-D sin-cos embedding of Vaswani et al. (2017) with frequencies 1/10000^(i/(dim/4)),
    as MAE's `get_2d_sincos_pos_embed`. Being a function of the grid, it exists for any image size.
    """
    if dim % 4:
        raise ValueError(f"the token width must be a multiple of 4 for 2-D sin-cos position embeddings; got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # dim/4

    def embed_1d(n: int) -> Tensor:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None, :]  # n x dim/4
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # n x dim/2

    r = embed_1d(rows)[:, None, :].expand(rows, cols, dim // 2)
    c = embed_1d(cols)[None, :, :].expand(rows, cols, dim // 2)
    return torch.cat([r, c], dim=2).reshape(rows * cols, dim).float()  # rows·cols x dim


def position(table: Tensor, rows: int, cols: int) -> Tensor:
    """The (1, rows·cols, D) position table, the cached one when the grid is the training grid."""
    if rows == cols == math.isqrt(table.shape[1]):
        return table
    return sincos_pos_embed_2d(table.shape[2], rows, cols).to(table.device).unsqueeze(0)


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)), GELU MLP 4× wide (ViT)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"token width {dim} must be a multiple of the number of heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of the normalised input, per head: (B, h, N, D/h) each."""
        b, n, d = x.shape  # B x N x D
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads)  # B x N x 3 x h x D/h
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B x h x N x D/h each
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape  # B x N x D
        a = F.scaled_dot_product_attention(*self.qkv_heads(x))  # B x h x N x D/h
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))  # B x N x D
        return x + self.mlp(self.norm2(x))  # B x N x D

    def attention(self, x: Tensor) -> Tensor:
        """The attention weights softmax(q·kᵀ/√(D/h)) (B, h, N, N) that ``forward`` applies to the values
        (its fused kernel never materialises them): DINO's ``get_last_selfattention``."""
        q, k, _ = self.qkv_heads(x)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)  # B x h x N x N


def init_transformer(module: nn.Module) -> None:
    """MAE's `_init_weights`: Xavier-uniform Linear weights (as the JAX ViT), zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


Pool = Literal["mean", "cls"]


class ViT(nn.Module):
    """ViT encoder: images (N, 3, S, S) -> features (N, dim); `forward_visible` for MAE pretraining."""

    pos_embed: Tensor  # 1 x L x D buffer

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 pool: Pool = "mean") -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' (MAE) or 'cls' (DINO); got {pool!r}")
        grid = image_size // patch_size
        self.pool = pool
        self.patch_size = patch_size
        self.num_patches = grid * grid
        self.num_features = dim
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed, so not a parameter, and not in state_dict: rebuilt from the config on load
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid, grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        init_transformer(self)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear over the flattened patch (MAE)
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    def embed(self, x: Tensor) -> Tensor:
        """Patch tokens with their position embeddings, before any masking."""
        t = self.patch_embed(x)  # B x D x gh x gw
        _, _, rows, cols = t.shape
        t = t.flatten(2).transpose(1, 2)  # B x L x D
        return t + position(self.pos_embed, rows, cols)  # B x L x D

    def with_cls(self, tokens: Tensor) -> Tensor:
        """The class token prepended: (B, K, D) -> (B, 1 + K, D) (no position, as MAE's zero one)."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # B x 1 x D
        return torch.cat([cls.to(tokens.dtype), tokens], dim=1)  # B x 1+K x D

    def transform(self, tokens: Tensor) -> Tensor:
        """Prepend the class token, run the blocks, normalise: (B, K, D) -> (B, 1 + K, D)."""
        x = self.with_cls(tokens)  # B x 1+K x D
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # B x 1+K x D

    def forward(self, x: Tensor) -> Tensor:
        """The features kNN and the linear probe read, of the unmasked image (B, D).

        ``pool="mean"`` (MAE): the mean of the patch tokens rather than the class token: MAE's encoder
        "works similarly well without it (with average pooling)" (He et al. 2021, §A.1), its fine-tuning
        default is global pooling (`--global_pool`), and in its pretraining the class token gets no loss of
        its own. ``pool="cls"`` (DINO): the class token after the final norm, what DINO's head and
        evaluations read (facebookresearch/dino vision_transformer.py ``forward``).
        """
        tokens = self.transform(self.embed(x))  # B x 1+L x D
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)  # B x D

    def last_attention(self, x: Tensor) -> Tensor:
        """The last block's attention weights (B, h, 1 + L, 1 + L) on images x, the class token first (DINO's
        ``get_last_selfattention``): row 0 is where the class token looks."""
        t = self.with_cls(self.embed(x))  # B x 1+L x D
        for block in self.blocks[:-1]:
            t = block(t)
        last: Block = self.blocks[-1]  # type: ignore[assignment]
        return last.attention(t)  # B x h x 1+L x 1+L

    def encode_kept(self, x: Tensor, ids_keep: Tensor) -> Tensor:
        """Tokens (B, 1 + K, D) of the patches `ids_keep` (B, K): only they enter the transformer."""
        tokens = self.embed(x)  # B x L x D
        index = ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[2])  # B x K x D
        return self.transform(tokens.gather(1, index))  # B x 1+K x D

    def forward_visible(self, x: Tensor, mask: Tensor) -> Tensor:
        """MAE's encoder: class token + the visible patches of each image (mask: (B, L) bool, True = masked).

        The masked patches are dropped before the first block (He et al. 2021, §3 "MAE encoder"), so
        their pixels cannot reach the output; every row of `mask` must hide the same number of patches.
        """
        ids_keep, _ = visible_index(mask)  # B x K
        return self.encode_kept(x, ids_keep)  # B x 1+K x D

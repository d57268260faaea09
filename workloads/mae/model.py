"""MAE's network (He et al. 2021): a ViT encoder on the visible patches and a light transformer decoder that
predicts the pixels of every patch; it knows nothing of masks' sampling, the loss or the loop. `encoder`
maps images (N, 3, S, S) to features (N, F): what kNN, the linear probe and the exported model use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from workloads.masks import visible_index
from workloads.vit import LN_EPS, Block, ViT, init_transformer, position, sincos_pos_embed_2d


class MAEModel(nn.Module):
    """ViT encoder + MAE decoder: Linear to the decoder width, mask tokens, fixed positions, blocks, Linear
    to p·p·3 pixels per patch (He et al. 2021, §3 "MAE decoder"; facebookresearch/mae `models_mae.py`)."""

    decoder_pos_embed: Tensor  # 1 x L x Dd buffer

    def __init__(self, encoder: ViT, decoder_dim: int, decoder_depth: int, decoder_heads: int) -> None:
        super().__init__()
        self.encoder = encoder
        grid = math.isqrt(encoder.num_patches)
        self.decoder_embed = nn.Linear(encoder.num_features, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))  # shared, learned: one per masked patch
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(decoder_dim, grid, grid).unsqueeze(0),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=LN_EPS)
        self.decoder_pred = nn.Linear(decoder_dim, encoder.patch_size**2 * 3)
        init_transformer(self.decoder_blocks)
        for layer in (self.decoder_embed, self.decoder_pred, self.decoder_norm):
            init_transformer(layer)
        nn.init.normal_(self.mask_token, std=0.02)

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x D

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Predicted pixels (B, L, p·p·3) of every patch; mask (B, L) bool, True = hidden from the encoder."""
        ids_keep, ids_restore = visible_index(mask)  # B x K, B x L
        latent = self.encoder.encode_kept(x, ids_keep)  # B x 1+K x D
        y = self.decoder_embed(latent)  # B x 1+K x Dd
        b, length = mask.shape
        fill = self.mask_token.to(y.dtype).expand(b, length - ids_keep.shape[1], -1)  # B x L-K x Dd
        patches = torch.cat([y[:, 1:], fill], dim=1)  # B x L x Dd: visible first, then masked
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, y.shape[2]))  # B x L x Dd, grid order
        grid = math.isqrt(length)
        patches = patches + position(self.decoder_pos_embed, grid, grid)
        y = torch.cat([y[:, :1], patches], dim=1)  # B x 1+L x Dd
        for block in self.decoder_blocks:
            y = block(y)
        return self.decoder_pred(self.decoder_norm(y))[:, 1:]  # B x L x p²3, class token dropped


def build_mae_model(image_size: int, patch_size: int, dim: int, depth: int, heads: int, decoder_dim: int,
                    decoder_depth: int, decoder_heads: int) -> MAEModel:
    encoder = ViT(image_size, patch_size, dim, depth, heads)
    return MAEModel(encoder, decoder_dim, decoder_depth, decoder_heads)

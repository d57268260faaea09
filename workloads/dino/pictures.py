"""DINO's attention maps (Caron et al. 2021, Fig. 1 and 3; facebookresearch/dino visualize_attention.py): where the
class token of the teacher's last block looks, one map per head, drawn at the image's size."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from workloads.pictures import pyplot
from workloads.vit import ViT


def cls_attention(vit: ViT, x: Tensor) -> Tensor:
    """The class token's attention over the patches in the last block, per head, upsampled (nearest) to the
    image: (N, h, S, S), each map summing to at most 1 (the class token's attention to itself is left out,
    as the reference's ``attentions[0, :, 0, 1:]``)."""
    attn = vit.last_attention(x)  # N x h x 1+L x 1+L
    n, heads = attn.shape[:2]
    rows, cols = x.shape[-2] // vit.patch_size, x.shape[-1] // vit.patch_size
    maps = attn[:, :, 0, 1:].reshape(n, heads, rows, cols)  # N x h x gh x gw
    return F.interpolate(maps.float(), scale_factor=vit.patch_size, mode="nearest")  # N x h x S x S


def attention_grid(images: Tensor, maps: Tensor, path: str, title: str) -> None:
    """One row per image: the uint8 image (3, S, S), then each head's map (S, S) in its own colour scale."""
    plt = pyplot()
    n, heads = maps.shape[:2]
    fig, axes = plt.subplots(n, heads + 1, figsize=(1.2 * (heads + 1) + 0.4, 1.2 * n + 0.5), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(images[i].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        for h in range(heads):
            axes[i][h + 1].imshow(maps[i, h].cpu().numpy(), interpolation="nearest", cmap="viridis")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("input", fontsize=7)
    for h in range(heads):
        axes[0][h + 1].set_title(f"head {h + 1}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


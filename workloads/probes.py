"""Representation quality from frozen features: kNN monitor, linear probe, 2-D embedding.

Pure functions on feature tensors (N, F) and integer labels (N,); the caller extracts features with
`SimCLRModel.features` (before the projection head, SimCLR §4.2) in eval mode.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_features_labels(features: Tensor, labels: Tensor | None, name: str, num_classes: int) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name}_features must be (N, F); got shape {tuple(features.shape)}.")
    if features.shape[0] == 0:
        raise ValueError(f"{name}_features is empty; pass at least one row.")
    if labels is None:
        return
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"{name}_labels must be ({features.shape[0]},) to match {name}_features; got shape {tuple(labels.shape)}."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels must be integer class ids; got dtype {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"{name}_labels must lie in [0, num_classes={num_classes}); "
            f"got range [{int(labels.min())}, {int(labels.max())}]."
        )


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN labels (M,) for test rows: cosine similarity on L2-normalised features, the top-k
    train neighbours vote for their class with weight exp(sim/temperature).

    This is the monitor of InstDisc (Wu et al. 2018), used by lightly and solo-learn (k=200, τ=0.1).
    k is capped at the train size; the test set is processed `chunk_size` rows at a time so memory
    stays at chunk_size × N similarities. Ties go to the lowest class id.
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be > 0; got num_classes={num_classes}.")
    if k <= 0:
        raise ValueError(f"k must be > 0; got k={k}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got temperature={temperature}.")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0; got chunk_size={chunk_size}.")
    _check_features_labels(train_features, train_labels, "train", num_classes)
    _check_features_labels(test_features, None, "test", num_classes)
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"test_features has {test_features.shape[1]} dims but train_features has "
            f"{train_features.shape[1]}; extract both with the same encoder."
        )
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.detach().float(), dim=1)  # N x F
    labels = train_labels.to(device=train.device, dtype=torch.long)  # N
    preds = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].detach().float().to(train.device), dim=1)
        sim = test @ train.T  # B x N cosine similarities
        sim_k, idx_k = sim.topk(k, dim=1)  # B x k
        weights = (sim_k / temperature).exp()  # B x k
        votes = torch.zeros(test.shape[0], num_classes, device=train.device)  # B x C
        votes.scatter_add_(1, labels[idx_k], weights)
        preds.append(votes.argmax(dim=1))  # B
    return torch.cat(preds)  # M


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy in [0, 1] of `knn_predict` against `test_labels`."""
    _check_features_labels(test_features, test_labels, "test", num_classes)
    preds = knn_predict(
        train_features,
        train_labels,
        test_features,
        num_classes,
        k=k,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    return int((preds == test_labels.to(preds.device)).sum()) / preds.shape[0]


def _check_probe_args(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                      num_classes: int, epochs: int, lr: float, weight_decay: float, batch_size: int) -> None:
    if num_classes <= 0:
        raise ValueError(f"num_classes must be > 0; got num_classes={num_classes}.")
    for field, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value <= 0:
            raise ValueError(f"linear_probe {field} must be > 0; got {field}={value}.")
    if not lr > 0:
        raise ValueError(f"linear_probe lr must be > 0; got lr={lr}.")
    if weight_decay < 0:
        raise ValueError(f"linear_probe weight_decay must be >= 0; got weight_decay={weight_decay}.")
    _check_features_labels(train_features, train_labels, "train", num_classes)
    _check_features_labels(test_features, test_labels, "test", num_classes)
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"test_features has {test_features.shape[1]} dims but train_features has "
            f"{train_features.shape[1]}; extract both with the same encoder."
        )


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Top-1 test accuracy in [0, 1] of one linear layer trained on frozen features (SimCLR §4 linear
    evaluation protocol, on pre-extracted features).

    Features are standardised with the train split's mean/std; AdamW with a cosine-decayed lr over
    `epochs` passes of shuffled mini-batches. Zero-initialised weights and a seeded local generator make
    it deterministic given `seed` without touching the global RNG.
    """
    _check_probe_args(train_features, train_labels, test_features, test_labels, num_classes, epochs, lr,
                      weight_decay, batch_size)

    device = train_features.device
    x_train = train_features.detach().to(torch.float32)  # N x F
    mean = x_train.mean(dim=0, keepdim=True)  # 1 x F
    std = x_train.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)  # 1 x F
    x_train = (x_train - mean) / std
    x_test = (test_features.detach().to(device=device, dtype=torch.float32) - mean) / std  # M x F
    y_train = train_labels.to(device=device, dtype=torch.long)
    y_test = test_labels.to(device=device, dtype=torch.long)

    n, dim = x_train.shape
    weight = torch.zeros(num_classes, dim, device=device, requires_grad=True)  # C x F
    bias = torch.zeros(num_classes, device=device, requires_grad=True)  # C
    opt = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size]
                logits = F.linear(x_train[idx], weight, bias)  # B x C
                loss = F.cross_entropy(logits, y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        preds = F.linear(x_test, weight, bias).argmax(dim=1)  # M
    return int((preds == y_test).sum()) / preds.shape[0]


def embed_2d(features: Tensor) -> Tensor:
    """(N, 2) float32 PCA projection of features for an embedding plot: scores on the top two axes.

    Eigendecomposition of the F x F scatter matrix in float64: exact and deterministic (unlike the
    randomised `torch.pca_lowrank`) and cheap for N >> F. Each axis's sign is fixed so its
    largest-magnitude loading is positive (as sklearn's `svd_flip`); with F < 2 the missing column is 0.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, F) matrix; got shape {tuple(features.shape)}.")
    x = features.detach().to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)  # N x F
    _, eigvecs = torch.linalg.eigh(x.T @ x)  # F x F, columns in ascending eigenvalue order
    r = min(2, x.shape[1])
    axes = eigvecs[:, -r:].flip(1)  # F x r, largest variance first
    signs = torch.sign(axes.gather(0, axes.abs().argmax(dim=0, keepdim=True)))  # 1 x r
    axes = axes * torch.where(signs == 0, 1.0, signs)
    out = torch.zeros(x.shape[0], 2, dtype=torch.float32, device=features.device)  # N x 2
    out[:, :r] = (x @ axes).float()  # N x r
    return out

"""kNN monitor, linear probe and PCA embedding on synthetic features."""

import math

import pytest
import torch

from workloads.probes import embed_2d, knn_accuracy, knn_predict, linear_probe

NUM_CLASSES, DIM = 5, 32


def _clusters(n_per_class: int, seed: int, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian clusters: class c centred on a fixed random direction (shared by all seeds)."""
    centres = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(1234))  # C x D
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)  # N
    features = centres[labels] + spread * torch.randn(labels.shape[0], DIM, generator=gen)  # N x D
    return features, labels


def _random(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=gen), torch.randint(0, NUM_CLASSES, (n,), generator=gen)


def _naive_knn(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, k: int, temperature: float) -> list[int]:
    """Per test row in Python: cosine similarities, k nearest, exp(sim/τ) votes per class, argmax."""
    preds = []
    for row in test.tolist():
        sims = []
        for j, other in enumerate(train.tolist()):
            dot = sum(a * b for a, b in zip(row, other, strict=True))
            norm = math.sqrt(sum(a * a for a in row)) * math.sqrt(sum(b * b for b in other))
            sims.append((dot / norm, j))
        votes = [0.0] * NUM_CLASSES
        for sim, j in sorted(sims, reverse=True)[:k]:
            votes[int(labels[j])] += math.exp(sim / temperature)
        preds.append(max(range(NUM_CLASSES), key=lambda c: (votes[c], -c)))
    return preds


def test_knn_matches_naive_reference() -> None:
    train, train_labels = _random(40, seed=0)
    test, _ = _random(15, seed=1)
    preds = knn_predict(train, train_labels, test, NUM_CLASSES, k=7, temperature=0.5)
    assert preds.tolist() == _naive_knn(train, train_labels, test, k=7, temperature=0.5)


def test_knn_is_perfect_on_well_separated_clusters() -> None:
    train, train_labels = _clusters(100, seed=0)
    test, test_labels = _clusters(40, seed=1)
    assert knn_accuracy(train, train_labels, test, test_labels, NUM_CLASSES) == 1.0


def test_knn_is_near_chance_on_random_labels() -> None:
    train, train_labels = _random(2000, seed=0)
    test, test_labels = _random(2000, seed=1)
    acc = knn_accuracy(train, train_labels, test, test_labels, NUM_CLASSES)
    assert abs(acc - 1 / NUM_CLASSES) < 0.05


def test_knn_caps_k_at_train_size() -> None:
    train, train_labels = _clusters(2, seed=0)  # 10 rows
    test, test_labels = _clusters(3, seed=1)
    preds = knn_predict(train, train_labels, test, NUM_CLASSES, k=200)
    assert preds.shape == (15,) and preds.dtype == torch.long
    assert torch.equal(preds, knn_predict(train, train_labels, test, NUM_CLASSES, k=10))
    assert torch.equal(preds, test_labels)


def test_knn_chunking_does_not_change_predictions() -> None:
    train, train_labels = _random(300, seed=0)
    test, _ = _random(50, seed=1)
    full = knn_predict(train, train_labels, test, NUM_CLASSES, k=20)
    chunked = knn_predict(train, train_labels, test, NUM_CLASSES, k=20, chunk_size=7)
    assert torch.equal(full, chunked)


def test_knn_rejects_labels_out_of_range() -> None:
    train, train_labels = _random(20, seed=0)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(train, train_labels + NUM_CLASSES, train, NUM_CLASSES)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(train, train_labels, train, NUM_CLASSES, temperature=0.0)


def test_linear_probe_separates_clusters() -> None:
    # a wider spread than the kNN test so the probe has something to learn
    train, train_labels = _clusters(100, seed=0, spread=1.0)
    test, test_labels = _clusters(40, seed=1, spread=1.0)
    acc = linear_probe(train, train_labels, test, test_labels, NUM_CLASSES, epochs=30)
    assert acc >= 0.95


def test_linear_probe_is_near_chance_on_random_labels() -> None:
    train, train_labels = _random(1000, seed=0)
    test, test_labels = _random(1000, seed=1)
    acc = linear_probe(train, train_labels, test, test_labels, NUM_CLASSES, epochs=30)
    assert abs(acc - 1 / NUM_CLASSES) < 0.06


def test_linear_probe_is_deterministic_given_seed_and_leaves_global_rng_alone() -> None:
    train, train_labels = _random(300, seed=0)
    test, test_labels = _random(300, seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = linear_probe(train, train_labels, test, test_labels, NUM_CLASSES, epochs=5, batch_size=32, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    b = linear_probe(train, train_labels, test, test_labels, NUM_CLASSES, epochs=5, batch_size=32, seed=3)
    assert a == b


def test_linear_probe_works_under_no_grad() -> None:
    train, train_labels = _clusters(20, seed=0)
    with torch.no_grad():
        acc = linear_probe(train, train_labels, train, train_labels, NUM_CLASSES, epochs=10)
    assert acc == 1.0


def test_embed_2d_shape_and_first_axis_follows_largest_variance() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=gen)
    x[:, 3] *= 20.0  # dominant direction
    x[:, 5] *= 5.0  # second
    emb = embed_2d(x)
    assert emb.shape == (200, 2)
    centred = x - x.mean(dim=0)
    assert torch.corrcoef(torch.stack([emb[:, 0], centred[:, 3]]))[0, 1].abs() > 0.99
    assert torch.corrcoef(torch.stack([emb[:, 1], centred[:, 5]]))[0, 1].abs() > 0.9
    torch.testing.assert_close(emb.mean(dim=0), torch.zeros(2), atol=1e-4, rtol=0)


def test_embed_2d_pads_single_feature_column() -> None:
    emb = embed_2d(torch.arange(6.0).unsqueeze(1))
    assert emb.shape == (6, 2)
    assert torch.equal(emb[:, 1], torch.zeros(6))

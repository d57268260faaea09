"""The parts Barlow Twins and VICReg share: the off-diagonal sum of squares, the expander MLP and the twin
network (one backbone and projector, each view normalised by BatchNorm on its own); and, for both
methods, a checkpoint's round trip."""

from __future__ import annotations

import io
from contextlib import nullcontext

import pytest
import torch
from torch import Tensor, nn

from workloads.config import Config
from workloads.heads import expander_mlp
from workloads.joint_embedding import TwinModel, build_twin_model, off_diagonal_square_sum
from workloads.method import Method, Net, normalize
from workloads.methods import METHODS
from workloads.optim import build_optimizer


@pytest.mark.parametrize("d", [1, 2, 5, 16])
def test_off_diagonal_square_sum_is_the_sum_over_every_pair_i_not_j(d: int) -> None:
    m = torch.randn(d, d, dtype=torch.float64)
    expected = sum(m[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    torch.testing.assert_close(off_diagonal_square_sum(m), torch.as_tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(off_diagonal_square_sum(m.T), off_diagonal_square_sum(m))  # a non-contiguous view


def test_off_diagonal_square_sum_keeps_small_entries_beside_a_diagonal_of_ones() -> None:
    m = torch.eye(4096) + 1e-4 * (1 - torch.eye(4096))  # the Barlow Twins matrix near convergence
    expected = 4096 * 4095 * 1e-8
    assert off_diagonal_square_sum(m).item() == pytest.approx(expected, rel=1e-3)


def test_off_diagonal_square_sum_rejects_a_matrix_that_is_not_square() -> None:
    with pytest.raises(ValueError, match="square matrix"):
        off_diagonal_square_sum(torch.randn(3, 4))


@pytest.mark.parametrize("num_layers", [2, 3])
@pytest.mark.parametrize("hidden_bias", [False, True])
def test_expander_is_linear_bn_relu_blocks_then_a_linear_without_bias(num_layers: int, hidden_bias: bool) -> None:
    mlp = expander_mlp(8, 32, 16, num_layers=num_layers, hidden_bias=hidden_bias)
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * (num_layers - 1) + [nn.Linear]
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    assert [m.bias is not None for m in linears] == [hidden_bias] * (num_layers - 1) + [False]
    assert mlp(torch.randn(4, 8)).shape == (4, 16)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"in_dim": 0}, "in_dim"), ({"hidden_dim": -1}, "hidden_dim"), ({"out_dim": 0}, "out_dim"),
    ({"num_layers": 4}, "num_layers"),
])
def test_expander_rejects_bad_sizes_naming_the_field(kwargs: dict[str, int], field: str) -> None:
    sizes = {"in_dim": 8, "hidden_dim": 16, "out_dim": 4, "num_layers": 3, **kwargs}
    with pytest.raises(ValueError, match=f"expander_mlp {field}"):
        expander_mlp(**sizes)


def _cfg(hidden: int) -> Config:
    return Config().replace({"data.image_size": 8, "model.widths": [8, 16],
                             "model.blocks": [1, 1], "model.proj_hidden_dim": hidden, "model.proj_dim": 12,
                             "model.proj_layers": 3})


def test_twin_model_is_sized_by_the_model_section() -> None:
    model = build_twin_model(_cfg(hidden=0), hidden_bias=False)  # 0: the backbone's width (16)
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 16), (16, 16), (16, 12)]
    model = build_twin_model(_cfg(hidden=24), hidden_bias=True)
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 24), (24, 24), (24, 12)]


def test_twin_model_normalises_each_views_batch_on_its_own() -> None:
    torch.manual_seed(0)
    model = build_twin_model(_cfg(hidden=16), hidden_bias=False).train()
    assert isinstance(model, TwinModel)
    x0, x1 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    z0, z1 = model(x0, x1)
    assert z0.shape == z1.shape == (6, 12)
    z0_again, _ = model(x0, 5.0 * x1 + 2.0)  # another second view: the first view's BatchNorm statistics stay
    torch.testing.assert_close(z0_again, z0)
    together = model.projector(model.encoder(torch.cat([x0, x1])))[:6]  # one batch of both: other statistics
    assert not torch.allclose(together, z0, atol=1e-4)
    assert torch.equal(model.features(x0), model.encoder(x0))


def _steps(method: Method, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, seeds: tuple[int, ...]
           ) -> None:
    net = Net(forward=model, core=model, image=normalize, autocast=nullcontext)
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        batch: dict[str, Tensor] = {v: torch.randint(0, 256, (8, 3, 8, 8), generator=g, dtype=torch.uint8)
                                    for v in ("view0", "view1")}
        loss = method.loss(net, batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["barlowtwins", "vicreg"])
def test_a_checkpoints_round_trip_continues_identically(name: str) -> None:
    """Two LARS steps, a save, a load into a differently initialised model: the third step is the same."""
    cfg = Config().replace({"method": name, "data.image_size": 8, "model.widths": [8, 16], "model.blocks": [1, 1],
                            "model.proj_hidden_dim": 16, "model.proj_dim": 12, "model.proj_layers": 3})
    method = METHODS[name]

    def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = method.build_model(cfg).train()
        assert isinstance(model, TwinModel)
        return model, build_optimizer("lars", method.param_groups(model, cfg), lr=0.5, weight_decay=1e-4, eta=0.02)

    model, optimizer = build(0)
    _steps(method, model, optimizer, cfg, (1, 2))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    fresh, fresh_optimizer = build(123)
    assert not torch.equal(fresh.state_dict()["projector.0.weight"], model.state_dict()["projector.0.weight"])
    fresh.load_state_dict(saved["model"])
    fresh_optimizer.load_state_dict(saved["optimizer"])
    for m, o in ((model, optimizer), (fresh, fresh_optimizer)):  # the same third step from either
        _steps(method, m, o, cfg, (3,))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

"""MoCo v2 against the paper: the loss, the momentum update, the queue across workers, shuffle-BN, checkpoints.

The distributed tests spawn two real gloo processes (no mocks), every two-process scenario in one spawn.
"""

from __future__ import annotations

import copy
import io
from contextlib import nullcontext
from typing import Any

import pytest
import torch
from gloo_ranks import run_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from workloads import dist
from workloads.config import Config
from workloads.contrastive import LossConfig
from workloads.dist import all_gather
from workloads.heads import mlp_head
from workloads.method import Net, normalize
from workloads.methods import METHODS
from workloads.moco.config import MoCoConfig
from workloads.moco.loss import info_nce
from workloads.moco.method import MoCo
from workloads.moco.model import MoCoModel, batch_shuffle, batch_unshuffle
from workloads.moco.recipes import cifar10, digits
from workloads.momentum import momentum_at
from workloads.optim import build_optimizer
from workloads.sections import AugConfig

ATOL = RTOL = 1e-5
SIZE = 8  # image side of the tiny model's batches


def paper_info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE written straight from MoCo (arXiv:1911.05722) Eq. 1 and Algorithm 1, one query at a time, float64.

    L_q = −log( exp(q·k₊/τ) / Σ_{i=0..K} exp(q·k_i/τ) ), k₀ = k₊ the query's own key and k₁..k_K the queue;
    the loss of the batch is the mean over its N queries.
    """
    total = torch.zeros((), dtype=torch.float64)
    for i in range(q.shape[0]):
        qi = q[i].double()
        positive = torch.exp(torch.dot(qi, k[i].double()) / temperature)
        denominator = positive
        for j in range(queue.shape[0]):
            denominator = denominator + torch.exp(torch.dot(qi, queue[j].double()) / temperature)
        total = total - torch.log(positive / denominator)
    return total / q.shape[0]


def _unit(n: int, d: int, generator: torch.Generator) -> Tensor:
    return nn.functional.normalize(torch.randn(n, d, generator=generator), dim=1)  # (n, d), unit rows


def _qkq(n: int, d: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return _unit(n, d, g), _unit(n, d, g), _unit(size, d, g)  # q, k, queue


def _cfg(**overrides: Any) -> Config:
    """A MoCo config of a tiny ResNet (widths 8/16) on 8 px images: a step takes milliseconds."""
    return Config().replace({
        "method": "moco", "data.image_size": SIZE, "model.arch": "small_resnet", "model.widths": [8, 16],
        "model.blocks": [1, 1], "model.proj_dim": 8, "moco.queue_size": 16, "moco.momentum": 0.9,
        **overrides,
    })


def _build(cfg: Config, seed: int = 0) -> MoCoModel:
    torch.manual_seed(seed)
    model = MoCo().build_model(cfg)
    assert isinstance(model, MoCoModel)
    return model.train()


def _net(forward: Any, core: nn.Module) -> Net:
    return Net(forward=forward, core=core, image=normalize, autocast=nullcontext)


def _batch(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, SIZE, SIZE)
    return {v: torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) for v in ("view0", "view1")}


def _step(model: MoCoModel, optimizer: torch.optim.Optimizer, cfg: Config, batch: dict[str, Tensor],
          step: int = 1, total_steps: int = 10) -> Tensor:
    """One training step as the orchestrator runs it: loss, backward, optimiser step, after_step."""
    loss = MoCo().loss(_net(model, model), batch, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    MoCo().after_step(model, step, total_steps, cfg)
    return loss.detach()


# --- the loss against the paper -----------------------------------------------------------------------

SIZES = pytest.mark.parametrize("n", [1, 3, 8])
QUEUES = pytest.mark.parametrize("queue_size", [1, 7, 32])
DIMS = pytest.mark.parametrize("d", [4, 32])
TEMPERATURES = pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])


@SIZES
@QUEUES
@DIMS
@TEMPERATURES
def test_info_nce_matches_paper(n: int, queue_size: int, d: int, temperature: float) -> None:
    q, k, queue = _qkq(n, d, queue_size)
    actual = info_nce(q, k, queue, temperature)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), paper_info_nce(q, k, queue, temperature), atol=ATOL, rtol=RTOL)


@SIZES
@QUEUES
@TEMPERATURES
def test_info_nce_gradients_match_paper(n: int, queue_size: int, temperature: float) -> None:
    q, k, queue = _qkq(n, 16, queue_size)
    q.requires_grad_()
    k.requires_grad_()
    rq = q.detach().double().requires_grad_()
    rk = k.detach().double().requires_grad_()

    info_nce(q, k, queue, temperature).backward()
    paper_info_nce(rq, rk, queue, temperature).backward()

    assert q.grad is not None and k.grad is not None
    torch.testing.assert_close(q.grad.double(), rq.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(k.grad.double(), rk.grad, atol=ATOL, rtol=RTOL)


def test_info_nce_computes_in_float32_under_autocast_and_upcasts_bfloat16() -> None:
    q, k, queue = _qkq(8, 128, 64)
    expected = paper_info_nce(q, k, queue, 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = info_nce(q, k, queue, 0.07)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=ATOL, rtol=RTOL)
    bf = info_nce(q.bfloat16(), k.bfloat16(), queue.bfloat16(), 0.07)
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf.double(), paper_info_nce(q.bfloat16(), k.bfloat16(), queue.bfloat16(), 0.07),
                               atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("temperature", [0.0, -0.2, float("nan")])
def test_info_nce_rejects_non_positive_temperature(temperature: float) -> None:
    q, k, queue = _qkq(2, 4, 3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce(q, k, queue, temperature)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "queue_shape", "match"),
    [((4, 8), (3, 8), (5, 8), "q and k"), ((0, 8), (0, 8), (5, 8), "at least one row"),
     ((4, 8), (4, 8), (5, 7), "queue must be")],
    ids=["different-n", "empty", "queue-width"],
)
def test_info_nce_rejects_bad_shapes(q_shape: tuple[int, ...], k_shape: tuple[int, ...],
                                     queue_shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        info_nce(torch.randn(q_shape), torch.randn(k_shape), torch.randn(queue_shape), 0.2)


# --- the momentum encoder -----------------------------------------------------------------------------


def test_key_encoder_starts_as_a_frozen_copy_of_the_query_encoder() -> None:
    model = _build(_cfg())
    for q, k in zip(model.query_parameters(), model.key_parameters(), strict=True):
        assert torch.equal(q, k) and q is not k
        assert q.requires_grad and not k.requires_grad


def test_key_encoder_is_momentum_average_of_query_encoder_after_each_step() -> None:
    cfg = _cfg()
    m = cfg.get(MoCoConfig).momentum
    model = _build(cfg)
    optimizer = build_optimizer("sgd", MoCo().trainable(model), lr=0.5, weight_decay=1e-4)
    for step in (1, 2, 3):
        keys_before = [p.detach().clone() for p in model.key_parameters()]
        queries_before = [p.detach().clone() for p in model.query_parameters()]

        loss = MoCo().loss(_net(model, model), _batch(8, seed=step), cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert all(p.grad is None for p in model.key_parameters())  # no gradient reaches f_k
        assert all(torch.equal(p, b) for p, b in zip(model.key_parameters(), keys_before, strict=True))
        assert not all(torch.equal(p, b) for p, b in zip(model.query_parameters(), queries_before, strict=True))
        queries = [p.detach().clone() for p in model.query_parameters()]
        key_buffers = [b.clone() for b in model.key_encoder.buffers()]  # BN statistics of this step's keys

        MoCo().after_step(model, step, 10, cfg)
        for k, k0, q in zip(model.key_parameters(), keys_before, queries, strict=True):
            torch.testing.assert_close(k, m * k0 + (1 - m) * q, atol=1e-6, rtol=1e-6)
        # only parameters are averaged; BN running statistics stay the key encoder's own (reference builder)
        assert all(torch.equal(b, b0) for b, b0 in zip(model.key_encoder.buffers(), key_buffers, strict=True))


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.99), (25, 1 - 0.01 * (0.5 ** 0.5 + 1) / 2), (50, 0.995), (100, 1.0)],
    ids=["start", "quarter", "mid", "end"],
)
def test_cosine_momentum_schedule_rises_from_base_to_one(step: int, expected: float) -> None:
    assert momentum_at(step, 100, 0.99, "cosine") == pytest.approx(expected, abs=1e-12)
    assert momentum_at(step, 100, 0.99, "constant") == 0.99


def test_after_step_uses_the_cosine_schedule() -> None:
    cfg = _cfg(**{"moco.momentum_schedule": "cosine", "moco.momentum": 0.5})
    model = _build(cfg)
    with torch.no_grad():
        for p in model.query_parameters():
            p.add_(1.0)  # make f_q and f_k differ
    keys0 = [p.clone() for p in model.key_parameters()]
    queries = [p.detach().clone() for p in model.query_parameters()]
    MoCo().after_step(model, 50, 100, cfg)  # m = 0.75 mid-way
    for k, k0, q in zip(model.key_parameters(), keys0, queries, strict=True):
        torch.testing.assert_close(k, 0.75 * k0 + 0.25 * q)
    keys_mid = [p.clone() for p in model.key_parameters()]
    MoCo().after_step(model, 100, 100, cfg)  # m = 1 at the end: f_k frozen
    assert all(torch.equal(k, k1) for k, k1 in zip(model.key_parameters(), keys_mid, strict=True))


def test_momentum_schedule_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="constant' or 'cosine"):
        momentum_at(1, 10, 0.99, "linear")


# --- the queue in one process -------------------------------------------------------------------------


def _fifo(queue: Tensor, ptr: int, rows: Tensor) -> tuple[Tensor, int]:
    """The queue as the paper describes it: enqueue the batch's keys one by one, dropping the oldest."""
    queue = queue.clone()
    for row in rows:
        queue[ptr] = row
        ptr = (ptr + 1) % queue.shape[0]
    return queue, ptr


def _tiny_moco(queue_size: int, dim: int = 4, in_dim: int = 6, bn: bool = False, shuffle_bn: bool = True,
               seed: int = 0) -> MoCoModel:
    """MoCo on feature vectors (N, in_dim): Linear (+ BatchNorm1d) encoder, MLP head."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(in_dim, 8), nn.BatchNorm1d(8)) if bn else nn.Linear(in_dim, 8)
    return MoCoModel(encoder, mlp_head(8, 8, dim), dim=dim, queue_size=queue_size, shuffle_bn=shuffle_bn).train()


@pytest.mark.parametrize(("queue_size", "batches"), [(10, (3, 3, 3, 3)), (8, (4, 4, 4)), (4, (6, 3, 5))],
                         ids=["wraps", "divides", "batch-larger-than-queue"])
def test_enqueue_is_a_fifo_of_the_newest_keys(queue_size: int, batches: tuple[int, ...]) -> None:
    model = _tiny_moco(queue_size)
    expected, ptr = model.queue.clone(), 0
    g = torch.Generator().manual_seed(1)
    for n in batches:
        keys = _unit(n, 4, g)
        model.enqueue(keys)
        expected, ptr = _fifo(expected, ptr, keys)
        assert torch.equal(model.queue, expected)
        assert int(model.queue_ptr) == ptr


def test_queue_starts_as_random_unit_keys() -> None:
    model = _tiny_moco(32)
    assert model.queue.shape == (32, 4) and model.queue_ptr.dtype == torch.long and int(model.queue_ptr) == 0
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(32))


def test_one_process_needs_no_process_group() -> None:
    x = torch.randn(5, 6)
    assert (dist.world_size(), dist.rank()) == (1, 0)
    assert all_gather(x) is x
    shuffled, idx = batch_shuffle(x)
    assert shuffled is x and torch.equal(batch_unshuffle(shuffled, idx), x)
    bn_model = _tiny_moco(16, bn=True)
    plain = copy.deepcopy(bn_model)
    plain.shuffle_bn = False
    torch.testing.assert_close(bn_model.keys(x), plain.keys(x))


# --- the method ----------------------------------------------------------------------------------------


def test_trainable_holds_the_query_encoder_and_head_and_no_key_parameter() -> None:
    model = _build(_cfg())
    trainable = {id(p) for p in MoCo().trainable(model).parameters()}
    assert trainable == {id(p) for p in model.query_parameters()}
    assert trainable.isdisjoint(id(p) for p in model.key_parameters())
    optimizer = build_optimizer("sgd", MoCo().trainable(model), lr=0.1, weight_decay=1e-4)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable


def test_checkpoint_carries_key_encoder_and_queue() -> None:
    cfg = _cfg()
    model = _build(cfg)
    optimizer = build_optimizer("sgd", MoCo().trainable(model), lr=0.5, weight_decay=1e-4)
    for step in (1, 2, 3):
        _step(model, optimizer, cfg, _batch(8, seed=step), step)
    state = model.state_dict()
    assert {"queue", "queue_ptr"} <= set(state)
    assert any(k.startswith("key_encoder.") for k in state) and any(k.startswith("key_head.") for k in state)
    assert int(state["queue_ptr"]) == 3 * 8 % 16
    assert not torch.equal(state["key_head.0.weight"], state["head.0.weight"])

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = _build(cfg, seed=123)
    assert not torch.equal(fresh.queue, model.queue)
    fresh.load_state_dict(torch.load(buffer))
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_moco_is_registered_without_buffer_broadcast() -> None:
    assert isinstance(METHODS["moco"], MoCo) and METHODS["moco"].name == "moco"
    assert MoCo.ddp_kwargs == {"forward_sync_buffers": False}


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_recipes_and_default_search_space_validate(name: str) -> None:
    from orchestrator.tune.space import parse_search  # the sweep's own parser of --search texts

    cfg = MoCo.recipes[name]()
    assert cfg.method == "moco" and cfg.get(LossConfig).temperature == 0.2 and cfg.get(MoCoConfig).momentum == 0.99
    for key, dim in parse_search(MoCo.search).items():
        for value in dim.probes():
            assert cfg.replace({key: value}).to_flat_dict()[key] == value


def test_cifar10_recipe_is_the_reference_demo() -> None:
    cfg = cifar10()
    assert (cfg.model.arch, cfg.model.cifar_stem) == ("resnet18", True)
    assert (cfg.train.batch_size, cfg.train.epochs) == (512, 800)
    assert (cfg.optim.name, cfg.optim.lr_scaling, cfg.optim.weight_decay) == ("sgd", "linear", 5e-4)
    assert cfg.optim.lr * cfg.train.batch_size / 256 == pytest.approx(0.06)  # the demo's lr at batch 512
    assert (cfg.get(MoCoConfig).queue_size, cfg.get(AugConfig).blur_p) == (4096, 0.0)


def test_digits_recipe_trains_a_step_on_16_images() -> None:
    cfg = digits()
    model = _build(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, cfg.data.image_size, cfg.data.image_size), generator=g, dtype=torch.uint8)
    batch = MoCo().views(images, cfg, g)
    optimizer = build_optimizer(cfg.optim.name, MoCo().trainable(model), lr=cfg.optim.lr,
                                weight_decay=cfg.optim.weight_decay, momentum=cfg.optim.momentum, eta=cfg.optim.eta)
    loss = _step(model, optimizer, cfg, batch)
    assert torch.isfinite(loss)
    assert int(model.queue_ptr) == 16


# --- two processes ------------------------------------------------------------------------------------

WORLD = 2
N_PER_RANK = 3
QUEUE, DIM = 10, 4
STEPS = 3


def _enqueue_scenario(rank: int) -> dict[str, Any]:
    """Three enqueues of N keys per rank into a queue of 10 (6 keys a step: the second one wraps)."""
    model = _tiny_moco(QUEUE, DIM)  # same seed on both ranks: the same initial queue
    out: dict[str, Any] = {"initial": model.queue.clone(), "keys": [], "queues": [], "ptrs": []}
    for step in range(STEPS):
        keys = _unit(N_PER_RANK, DIM, torch.Generator().manual_seed(10 * step + rank))
        model.enqueue(keys)
        out["keys"].append(keys)
        out["queues"].append(model.queue.clone())
        out["ptrs"].append(int(model.queue_ptr))
    return out


def _shuffle_scenario(rank: int) -> dict[str, Any]:
    torch.manual_seed(rank)  # different local permutations: only rank 0's may be used
    x = torch.randn(N_PER_RANK, 6, generator=torch.Generator().manual_seed(rank)) + 3.0 * rank  # (N, 6)
    shuffled, idx_unshuffle = batch_shuffle(x)
    out: dict[str, Any] = {"x": x, "shuffled": shuffled, "idx_unshuffle": idx_unshuffle,
                           "restored": batch_unshuffle(shuffled, idx_unshuffle)}
    for bn in (False, True):
        shuffling = _tiny_moco(16, bn=bn, shuffle_bn=True)
        plain = copy.deepcopy(shuffling)
        plain.shuffle_bn = False
        out[f"keys_bn{bn}"] = (shuffling.keys(x), plain.keys(x))
    return out


def _method_scenario(rank: int) -> dict[str, Any]:
    """One MoCo step through DDP as the orchestrator runs it; the keys recomputed with the same permutation."""
    cfg = _cfg()
    model = _build(cfg)  # same seed on both ranks, as the train loop does
    ddp = DistributedDataParallel(model, **MoCo.ddp_kwargs)
    optimizer = build_optimizer("sgd", MoCo().trainable(model), lr=0.5, weight_decay=1e-4)
    batch = _batch(4, seed=100 + rank)
    ptr = int(model.queue_ptr)
    torch.manual_seed(7)
    loss = MoCo().loss(_net(ddp, model), batch, cfg)
    torch.manual_seed(7)  # the same shuffle again, f_k unchanged: the same keys
    keys = all_gather(model.keys(batch["view1"], to_input=normalize))  # (W*N, D)
    out: dict[str, Any] = {"loss": loss.detach(), "ptr": ptr, "keys": keys, "queue": model.queue.clone(),
                           "queue_ptr": int(model.queue_ptr)}
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    MoCo().after_step(model, 1, 10, cfg)
    out["query"] = torch.cat([p.detach().flatten() for p in model.query_parameters()])
    out["key"] = torch.cat([p.detach().flatten() for p in model.key_parameters()])
    return out


def _ddp_init_scenario(rank: int) -> dict[str, dict[str, Tensor]]:
    """Workers built from different seeds: DDP construction with MoCo's kwargs hands every rank rank 0's
    parameters *and* buffers (queue, key encoder), though it broadcasts no buffer at each forward."""
    model = _build(_cfg(), seed=rank)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    DistributedDataParallel(model, **MoCo.ddp_kwargs)
    return {"before": before, "after": dict(model.state_dict())}


def _rank(rank: int) -> dict[str, Any]:
    return {
        "rank": dist.rank(),
        "enqueue": _enqueue_scenario(rank),
        "shuffle": _shuffle_scenario(rank),
        "method": _method_scenario(rank),
        "ddp_init": _ddp_init_scenario(rank),
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run every two-process scenario in one spawn (children are slow to start) and load the results."""
    results = run_ranks(_rank, tmp_path_factory.mktemp("moco_two_ranks"), WORLD)
    assert [r["rank"] for r in results] == list(range(WORLD))
    return results


def test_queue_holds_keys_of_all_workers_in_rank_order_and_wraps(ranks: list[dict[str, Any]]) -> None:
    runs = [r["enqueue"] for r in ranks]
    expected, ptr = runs[0]["initial"], 0
    for step in range(STEPS):
        gathered = torch.cat([run["keys"][step] for run in runs])  # (W*N, D): rank 0's keys, then rank 1's
        expected, ptr = _fifo(expected, ptr, gathered)
        for run in runs:
            assert torch.equal(run["queues"][step], expected), f"step {step}"
            assert run["ptrs"][step] == ptr
    assert runs[0]["ptrs"] == [6, 2, 8]  # the second step wrapped around the end


def test_queue_after_a_training_step_is_identical_on_every_worker(ranks: list[dict[str, Any]]) -> None:
    runs = [r["method"] for r in ranks]
    for run in runs:
        assert torch.isfinite(run["loss"])
        n = run["keys"].shape[0]  # W*N = 8 keys into a queue of 16
        assert torch.equal(run["queue"][run["ptr"] : run["ptr"] + n], run["keys"])
        assert run["queue_ptr"] == run["ptr"] + n
        assert torch.equal(run["queue"], runs[0]["queue"])
        # DDP-averaged gradients: the same f_q on both workers, hence the same f_k after the momentum update
        assert torch.equal(run["query"], runs[0]["query"]) and torch.equal(run["key"], runs[0]["key"])


def test_unshuffle_inverts_shuffle_with_one_permutation_for_all_workers(ranks: list[dict[str, Any]]) -> None:
    runs = [r["shuffle"] for r in ranks]
    for run in runs:
        assert torch.equal(run["restored"], run["x"])
        assert torch.equal(run["idx_unshuffle"], runs[0]["idx_unshuffle"])
    x_all = torch.cat([run["x"] for run in runs])  # (W*N, 6)
    idx_shuffle = torch.argsort(runs[0]["idx_unshuffle"])
    assert torch.equal(torch.cat([run["shuffled"] for run in runs]), x_all[idx_shuffle])
    assert not torch.equal(idx_shuffle, torch.arange(len(idx_shuffle)))  # the batch was shuffled


def test_shuffled_keys_equal_plain_keys_without_batchnorm_and_differ_with_it(ranks: list[dict[str, Any]]) -> None:
    for run in (r["shuffle"] for r in ranks):
        shuffled, plain = run["keys_bnFalse"]
        torch.testing.assert_close(shuffled, plain)  # the unshuffle returns each key to its image
        shuffled, plain = run["keys_bnTrue"]
        assert not torch.allclose(shuffled, plain, atol=1e-3)  # BN saw a batch mixed across workers


def test_ddp_construction_gives_every_worker_rank_0_queue_and_key_encoder(ranks: list[dict[str, Any]]) -> None:
    first, second = (r["ddp_init"] for r in ranks)
    assert not torch.equal(first["before"]["queue"], second["before"]["queue"])  # different seeds
    for name, value in first["before"].items():
        assert torch.equal(first["after"][name], value), name
        assert torch.equal(second["after"][name], value), name

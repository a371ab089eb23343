"""One rank's share of a step on the CPU, without worker processes: micro-batches and the
BatchNorm guard, the fp32 path unchanged, mixed precision, and the fp16 overflow that every rank
redoes together (two real gloo ranks, spawned)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from deepedge.devices import DeviceError
from deepedge.training import TensorDataset, build_model
from deepedge.training._compute import (
    InconsistentStep,
    compute_share,
    decode_slots,
    encode_slots,
    has_batchnorm,
    micro_batches,
    reduce_step,
)
from deepedge.training._errors import TrainingError
from deepedge.training._precision import Precision, check_precision

CPU = torch.device("cpu")


def data(n: int, size: int = 32, classes: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return TensorDataset(x, torch.randint(0, classes, (n,), generator=g), [str(c) for c in range(classes)])


def grads_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


# --- micro-batches and the BatchNorm guard ------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "no_single", "expected"),
    [
        (0, True, []),
        (1, True, [(0, 1)]),  # nothing to merge with: the lone sample is handled by the caller
        (5, True, [(0, 5)]),
        (32, True, [(0, 32)]),
        (33, False, [(0, 32), (32, 33)]),
        (33, True, [(0, 33)]),
        (65, True, [(0, 32), (32, 65)]),
        (66, True, [(0, 32), (32, 64), (64, 66)]),
    ],
)
def test_micro_batches(n: int, no_single: bool, expected: list[tuple[int, int]]) -> None:
    assert micro_batches(n, no_single=no_single) == expected


def test_has_batchnorm() -> None:
    assert has_batchnorm(build_model("resnet18", 4)) and has_batchnorm(build_model("mobilenet_v2", 4))
    assert not has_batchnorm(build_model("resnet18-gn", 4)) and not has_batchnorm(build_model("cnn-small", 4))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_a_batchnorm_share_of_33_at_32px_trains_the_lone_sample_with_the_one_before(name: str) -> None:
    """33 = 32 + 1: cut as before, the last pass would hold one sample, and BatchNorm at 1x1 maps
    raises "Expected more than 1 value per channel when training"."""
    torch.manual_seed(0)
    model = build_model(name, 4)
    d = data(33)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(d.batch(torch.arange(32, 33))[0])  # what the old cut did
    loss, _ = compute_share(model, d, torch.arange(33), cap=1.0)
    assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads_of(model))


def test_a_batchnorm_share_of_one_sample_is_normalised_by_the_running_statistics() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 4)
    d = data(1)
    before = [b.clone() for b in model.buffers()]
    loss, _ = compute_share(model, d, torch.arange(1), cap=1.0)
    assert torch.isfinite(loss).all() and grads_of(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))  # not updated from it
    assert all(m.training for m in model.modules())  # back in training mode
    # the same as a forward pass with BatchNorm in eval mode
    ref = build_model("resnet18", 4)
    ref.load_state_dict(model.state_dict())
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x, y = d.batch(torch.arange(1))
    with torch.no_grad():
        assert float(F.cross_entropy(ref(x), y, reduction="sum")) == pytest.approx(float(loss), rel=1e-6)


# --- precision ----------------------------------------------------------------------------------


def test_fp32_is_the_plain_path_bit_for_bit() -> None:
    d = data(40, size=8)
    results = []
    for precision in (None, Precision("fp32", CPU)):
        torch.manual_seed(0)
        model = build_model("cnn-small", 4)
        loss, _ = compute_share(model, d, torch.arange(40), cap=1.0, precision=precision)
        results.append((loss, grads_of(model)))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu_is_close_to_fp32_and_not_the_same(name: str) -> None:
    """Autocast runs the convolutions and the linear layer in 16 bits: the gradients move by
    about the 16-bit rounding (8 bits of mantissa for bf16, 11 for fp16), not more."""
    d = data(24, size=8)
    out = {}
    for prec in ("fp32", name):
        torch.manual_seed(0)
        model = build_model("cnn-small", 4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        p = Precision(prec, CPU)
        r = reduce_step(model, opt, d, torch.arange(24), 1.0, lambda t: None, precision=p)
        out[prec] = r.summed  # (returned only once no rank overflowed)
    ref, got = out["fp32"], out[name]
    scale = float(ref[:-1].abs().max())
    diff = float((ref[:-1] - got[:-1]).abs().max())
    assert 0 < diff <= 0.05 * scale, (diff, scale)  # measured: 0.018 x scale (bf16), 0.010 x scale (fp16)


def test_a_precision_the_device_lacks_is_a_config_error() -> None:
    check_precision("bf16", CPU)  # the CPU's autocast has both
    check_precision("fp16", CPU)
    with pytest.raises(DeviceError, match=r"training\.precision must be"):
        check_precision("fp8", CPU)


# --- an fp16 overflow on one rank: every rank redoes the step -----------------------------------


def overflow_rank(rank: int, init_file: str, out: object) -> None:
    """Rank 0 trains in fp16 with a loss scale far too large (its gradients overflow), rank 1 in
    fp32. Both must throw the same tries away and end with the same summed gradient."""
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30)
    )
    torch.manual_seed(0)
    model = build_model("cnn-small", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = Precision("fp16" if rank == 0 else "fp32", CPU, init_scale=2.0**24)
    reduces = []

    def all_reduce(t: torch.Tensor) -> None:
        reduces.append(float(t[-1]))
        dist.all_reduce(t)

    mine = torch.arange(0, 10) if rank == 0 else torch.arange(10, 24)
    r = reduce_step(model, opt, data(24, size=8), mine, 1.0, all_reduce, precision=precision)
    out.put((rank, len(reduces), reduces, precision.scale, r.summed.tolist()))  # type: ignore[attr-defined]
    dist.destroy_process_group()


def test_an_fp16_overflow_on_one_rank_makes_every_rank_redo_the_step(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=overflow_rank, args=(r, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=90) for _ in procs)
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    (_, tries0, flags0, scale0, list0), (_, tries1, flags1, scale1, list1) = results
    flat0, flat1 = torch.tensor(list0), torch.tensor(list1)
    assert tries0 == tries1 > 1  # both threw the same tries away
    assert flags0[:-1] == [1.0] * (tries0 - 1) and flags0[-1] == 0.0  # rank 0 overflowed, then did not
    assert set(flags1) == {0.0}  # rank 1 never did; it redid the step all the same
    assert scale0 == 2.0**24 * 0.5 ** (tries0 - 1) and scale1 == 1.0  # only the rank that overflowed lowered its scale
    assert torch.equal(flat0, flat1)
    # the step both took: the whole batch's gradient, rank 0's part computed in fp16
    torch.manual_seed(0)
    model = build_model("cnn-small", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref = reduce_step(model, opt, data(24, size=8), torch.arange(24), 1.0, lambda t: None).summed
    diff, scale = float((ref - flat0).abs().max()), float(ref[:-1].abs().max())
    assert diff <= 0.03 * scale, (diff, scale)


# --- a hostile rank's sums: the generation fails, never the honest rank's job ---------------------


@pytest.mark.parametrize("half", [False, True])
def test_impossible_control_slots_are_an_inconsistent_step(half: bool) -> None:
    assert decode_slots(encode_slots([3, 70000], half), half) == [3, 70000]
    for bad in (float("nan"), float("inf"), -1.0, 2.5, 2.0**30):
        with pytest.raises(InconsistentStep):
            decode_slots(torch.tensor([bad], dtype=torch.float32), False)


def _tampering(**at: float) -> object:
    """An all-reduce whose sum a hostile peer spoiled: adds ``at[index]`` to the buffer."""

    def all_reduce(t: torch.Tensor) -> None:
        for i, v in at.items():
            t[int(i.lstrip("_"))] += v

    return all_reduce


def test_a_hostile_overflow_count_or_a_non_finite_sum_fails_the_step_not_the_job() -> None:
    torch.manual_seed(0)
    model = build_model("cnn-small", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    d = data(8, size=8)
    with pytest.raises(InconsistentStep, match="ranks of 1 say"):  # more overflows than ranks
        reduce_step(model, opt, d, torch.arange(8), 1.0, _tampering(**{"_-1": 5.0}))  # type: ignore[arg-type]
    with pytest.raises(InconsistentStep, match="other ranks said"):  # "overflowed" every try: not this rank
        reduce_step(model, opt, d, torch.arange(8), 1.0, _tampering(**{"_-1": 1.0}))  # type: ignore[arg-type]
    with pytest.raises(InconsistentStep, match="not finite"):
        reduce_step(model, opt, d, torch.arange(8), 1.0, _tampering(**{"_0": float("nan")}))  # type: ignore[arg-type]
    # this rank's own fp16 overflow on every try is still the job's error (it diverged here)
    p = Precision("fp16", CPU, init_scale=2.0**120)
    with pytest.raises(TrainingError, match="non-finite gradients"):
        reduce_step(model, opt, d, torch.arange(8), 1.0, lambda t: None, precision=p)

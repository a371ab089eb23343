"""The plain-torch ResNet-18 and MobileNetV2 (deepedge/training/_nets.py): torchvision's state-dict
layout (reference written by scripts/torchvision_reference.py in an environment with torchvision,
which this one lacks), parameter counts, and a few training steps on the CPU."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepedge.training import TrainingError, build_model, load_checkpoint
from deepedge.training._nets import mobilenet_v2, resnet18

DATA = Path(__file__).parent / "data"
FACTORIES = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}
# torchvision's documented sizes at 1000 classes (ResNet18_Weights / MobileNet_V2_Weights meta
# "num_params"); at 10 classes the head is smaller by 990 x (512 | 1280 + 1)
PARAMS = {("resnet18", 1000): 11_689_512, ("resnet18", 10): 11_181_642}
PARAMS |= {("mobilenet_v2", 1000): 3_504_872, ("mobilenet_v2", 10): 2_236_682}


def signature(model: nn.Module) -> list[list[object]]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("classes", [10, 1000])
def test_state_dict_is_torchvisions_key_for_key(name: str, classes: int) -> None:
    ref = json.loads((DATA / f"torchvision_{name}.json").read_text())
    assert ref["model"] == f"torchvision.models.{name}"
    expected = ref["state_dict"][str(classes)]
    got = signature(FACTORIES[name](classes))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):  # in torchvision's order; shows the first difference
        assert g == e


@pytest.mark.parametrize(("name", "classes"), list(PARAMS))
def test_parameter_counts_are_torchvisions(name: str, classes: int) -> None:
    model = FACTORIES[name](classes)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name, classes]


@pytest.mark.parametrize("name", FACTORIES)
def test_group_norm_variant_has_the_same_parameters_and_no_running_statistics(name: str) -> None:
    bn, gn = FACTORIES[name](10), FACTORIES[name](10, norm="group")
    assert [(k, p.shape) for k, p in bn.named_parameters()] == [(k, p.shape) for k, p in gn.named_parameters()]
    assert not list(gn.buffers())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in bn.modules()
    )


def test_an_unknown_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="norm"):
        resnet18(10, norm="layer")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["resnet18", "resnet18-gn", "mobilenet_v2", "mobilenet_v2-gn"])
def test_a_few_sgd_steps_at_64px_lower_the_loss_with_finite_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 10, (8,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        final = float(F.cross_entropy(model(x), y))
    assert all(map(math.isfinite, [*losses, final])), losses
    assert min(losses[1:]) < losses[0], losses  # it learns the batch it sees


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_batchnorm_nets_cannot_train_on_a_single_32px_sample_and_the_gn_variants_can(name: str) -> None:
    """At 32x32 (the image-folder default) both nets end in a 1x1 feature map: a training
    micro-batch of one sample leaves BatchNorm one value per channel, which torch refuses.
    docs/training.md ("Models") says what this means for shares and micro-batches."""
    one = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        build_model(name, 10).train()(one)
    assert build_model(f"{name}-gn", 10).train()(one).shape == (1, 10)
    assert build_model(name, 10).train()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model(name, 10).eval()(one).shape == (1, 10)  # eval uses the running statistics


@pytest.mark.parametrize("name", ["cnn-small", "resnet18", "resnet18-gn", "mobilenet_v2", "mobilenet_v2-gn"])
def test_build_model_knows_the_names_without_torchvision(name: str) -> None:
    model = build_model(name, 7)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_model_names_list_the_new_ones() -> None:
    with pytest.raises(TrainingError, match="resnet18, resnet18-gn, mobilenet_v2, mobilenet_v2-gn"):
        build_model("resnet19", 10)


def test_a_checkpoint_of_the_net_loads_into_a_fresh_one(tmp_path: Path) -> None:
    a, b = build_model("mobilenet_v2", 10), build_model("mobilenet_v2", 10)
    with torch.no_grad():
        next(iter(a.parameters())).add_(1.0)
        a.features[1].conv[2].running_mean.fill_(0.5)  # buffers travel too
    torch.save({"model": a.state_dict()}, tmp_path / "base.pt")
    load_checkpoint(b, str(tmp_path / "base.pt"))
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def _summed_loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """The gradient of the summed loss over x, computed in forward passes cut at ``cuts``, as
    the trainer accumulates a share's micro-batches (and the all-reduce sums the shares)."""
    model.zero_grad()
    bounds = [0, *cuts, len(x)]
    for a, b in itertools.pairwise(bounds):
        F.cross_entropy(model(x[a:b]), y[a:b], reduction="sum").backward()  # type: ignore[no-untyped-call]
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_group_norm_nets_give_the_same_gradient_however_the_batch_is_cut_and_batchnorm_nets_do_not(name: str) -> None:
    """The model-level half of the data-parallel equivalence (docs/training.md, "Models"): one
    pass over 12 samples vs passes of 5 and 7 (two ranks' shares) vs 3, 4 and 5. The -gn
    MobileNetV2 has no dropout: with it, every pass draws its own masks."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 3, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)
    torch.manual_seed(0)
    gn = build_model(f"{name}-gn", 10).train()
    whole = _summed_loss_grads(gn, x, y, [])
    for cuts in ([5], [3, 7]):  # gradients up to ~50: atol 5e-4 is float rounding
        torch.testing.assert_close(_summed_loss_grads(gn, x, y, cuts), whole, rtol=1e-4, atol=5e-4)
    torch.manual_seed(0)
    bn = (resnet18(10) if name == "resnet18" else mobilenet_v2(10, dropout=0.0)).train()  # only BatchNorm differs
    whole = _summed_loss_grads(bn, x, y, [])
    apart = (_summed_loss_grads(bn, x, y, [5]) - whole).abs().max() / whole.abs().max()
    assert apart > 1e-3  # batch statistics of 5 and 7 samples are not those of 12

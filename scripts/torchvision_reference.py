"""Reference data and an equivalence check for deepedge's plain-torch ResNet-18 and MobileNetV2
(deepedge/training/_nets.py) against torchvision's. NEEDS torchvision, which deepedge itself does
not: run it in a scratch environment outside the repository, e.g.

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch torchvision
    PYTHONPATH=. /tmp/tvenv/bin/python scripts/torchvision_reference.py

1. Writes tests/data/torchvision_<model>.json: the ordered (key, shape, dtype) of torchvision's
   state dict at 10 and 1000 classes (tests/test_nets.py compares deepedge's nets with it).
2. Checks numerically, and prints: a torchvision model (random weights, BatchNorm affine
   parameters and head; running statistics of real activations), loaded into deepedge's
   (strict), gives the same outputs on a fixed input in eval mode; in train mode the same
   outputs, gradients and updated running statistics; and deepedge's state dict loads into
   torchvision's (strict). Exits 1 if a difference exceeds 1e-5. (A wrong activation or a
   missing residual connection shows up as differences of 0.2 to 5.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

from deepedge.training import _nets

MODELS = {"resnet18": _nets.resnet18, "mobilenet_v2": _nets.mobilenet_v2}
CLASSES = (10, 1000)
TOLERANCE = 1e-5


def signature(model: nn.Module) -> list[list[object]]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


def write_reference(out: Path) -> None:
    for name in MODELS:
        ref = {
            "model": f"torchvision.models.{name}",
            "torchvision": torchvision.__version__,
            "torch": torch.__version__,
            "made_by": "scripts/torchvision_reference.py",
            "state_dict": {str(n): signature(getattr(torchvision.models, name)(num_classes=n)) for n in CLASSES},
        }
        path = out / f"torchvision_{name}.json"
        path.write_text(_dump(ref))
        print(f"wrote {path} ({sum(len(v) for v in ref['state_dict'].values())} entries)")


def _dump(ref: dict[str, object]) -> str:
    """JSON with one state-dict entry per line: small, readable diffs when torchvision changes."""
    head = {k: v for k, v in ref.items() if k != "state_dict"}
    lines = ["{", *(f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()), ' "state_dict": {']
    entries = ref["state_dict"]
    assert isinstance(entries, dict)
    for i, (n, sig) in enumerate(entries.items()):
        lines.append(f"  {json.dumps(n)}: [")
        lines += [f"   {json.dumps(e)}{',' if j < len(sig) - 1 else ''}" for j, e in enumerate(sig)]
        lines.append("  ]" + ("," if i < len(entries) - 1 else ""))
    lines += [" }", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == ref
    return text


def randomise(model: nn.Module, seed: int) -> None:
    """Random affine BatchNorm parameters and head (the loaded weights must matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Linear):  # torchvision's N(0, 0.01) head would hide differences in eval mode
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def calibrate(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics of real activations (a cumulative average over ``x``), so that eval mode
    keeps the signal alive through every layer: with arbitrary statistics MobileNetV2's output
    shrank to ~0.4 and hid a wrong activation function."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for m in bns:
        m.momentum = 0.1


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a) if a else 0.0


def check(name: str, classes: int) -> float:
    tv = getattr(torchvision.models, name)(num_classes=classes)
    ours = MODELS[name](classes)
    assert signature(tv) == signature(ours), "state dict signatures differ"
    randomise(tv, 0)
    calibrate(tv, torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(3)))
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv2 = getattr(torchvision.models, name)(num_classes=classes)
    tv2.load_state_dict(ours.state_dict(), strict=True)  # and the other way
    g = torch.Generator().manual_seed(1)
    x224 = 2 * torch.randn(2, 3, 224, 224, generator=g)
    x64 = torch.randn(4, 3, 64, 64, generator=g)
    y64 = torch.randint(0, classes, (4,), generator=g)

    tv.eval()
    ours.eval()
    with torch.no_grad():
        ref = tv(x224)
        d_eval = float((ref - ours(x224)).abs().max())
        scale = float(ref.abs().max())

    tv.train()
    ours.train()
    outs, grads = [], []
    for m in (tv, ours):
        torch.manual_seed(2)  # the same dropout mask (MobileNetV2's classifier)
        out = m(x64)
        nn.functional.cross_entropy(out, y64).backward()
        outs.append(out.detach())
        grads.append({k: p.grad for k, p in m.named_parameters() if p.grad is not None})
    d_train = float((outs[0] - outs[1]).abs().max())
    d_grad = max_diff(grads[0], grads[1])
    d_stats = max_diff(
        {k: v for k, v in tv.state_dict().items() if "running" in k},
        {k: v for k, v in ours.state_dict().items() if "running" in k},
    )
    worst = max(d_eval, d_train, d_grad, d_stats)
    print(
        f"{name} classes={classes}: max |diff| eval output (2x3x224x224, max |output| {scale:.3g}) {d_eval:.3g}, "
        f"train output (4x3x64x64) {d_train:.3g}, gradients {d_grad:.3g}, running stats {d_stats:.3g}"
    )
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "data")
    p.add_argument("--check-only", action="store_true", help="do not write the reference files")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    if not args.check_only:
        args.out.mkdir(parents=True, exist_ok=True)
        write_reference(args.out)
    worst = max(check(name, n) for name in MODELS for n in CLASSES)
    print(f"worst difference {worst:.3g} (tolerance {TOLERANCE:g}): {'OK' if worst <= TOLERANCE else 'FAILED'}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())

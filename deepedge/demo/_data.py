"""Generated image data for the demo (nothing is downloaded): an image folder like Caltech-256,
one folder per class, each class a colour and a stripe direction under noise, so that a small CNN
can learn it and the loss visibly falls."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_image_folder"]


def make_image_folder(root: Path, images: int, classes: int = 10, size: int = 32, seed: int = 0) -> int:
    """Writes ``images`` PNGs under ``root/<class>/``; returns how many."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = rng.uniform(40, 215, size=(classes, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    written = 0
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        angle = np.pi * c / classes
        stripes = 40 * np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.6))
        for i in range(images // classes + (1 if c < images % classes else 0)):
            pixels = palette[c] + stripes[..., None] + rng.normal(0, 30, size=(size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.png")
            written += 1
    return written

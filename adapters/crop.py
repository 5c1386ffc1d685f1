"""Differentiable person crops shared by every critic adapter.

Pixel convention (continuous coordinates, as OpenCV's projection and ``align_corners=False``):
pixel ``(i, j)`` (column i, row j) covers ``[i, i+1) x [j, j+1)`` and its centre is at
``(i + 0.5, j + 0.5)``; an image of width W spans ``x`` in ``[0, W]``.

A box ``(x0, y0, x1, y1)`` in image pixels maps *edge to edge* onto an ``S x S`` crop: image point
``x`` goes to crop point ``u = (x - x0) * S / (x1 - x0)`` (same for y), so crop pixel centre
``u = k + 0.5`` samples the image at ``x = x0 + (k + 0.5) * (x1 - x0) / S`` by bilinear
interpolation between pixel centres. Samples outside the image read zeros (black padding).
The crop is ``torch.nn.functional.grid_sample`` over an ``affine_grid``, so it is differentiable
w.r.t. the images and the boxes. No anti-aliasing: shrinking by more than ~2x aliases; render the
person at roughly the critic's input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_affine(boxes: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """``theta (B, 2, 3)`` for ``F.affine_grid(..., align_corners=False)``: normalised crop
    coordinates -> normalised image coordinates, for ``boxes (B, 4)`` in an ``(H, W)`` image.

    With ``g = 2 x / W - 1`` (normalised image x) and ``g' in [-1, 1]`` over the crop:
    ``g = g' (x1 - x0) / W + (x0 + x1) / W - 1`` (and likewise for y with H).
    """
    H, W = image_hw
    x0, y0, x1, y1 = boxes.unbind(-1)
    zero = torch.zeros_like(x0)
    row_x = torch.stack([(x1 - x0) / W, zero, (x0 + x1) / W - 1.0], dim=-1)
    row_y = torch.stack([zero, (y1 - y0) / H, (y0 + y1) / H - 1.0], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def crop_and_resize(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop ``boxes`` out of ``images`` and resize them to ``size x size`` (bilinear).

    Args:
        images: ``(B, C, H, W)`` float images.
        boxes: ``(B, 4)`` ``(x0, y0, x1, y1)`` pixels (module docstring gives the exact mapping).
        size: output side S in pixels.

    Returns:
        ``(B, C, S, S)``; zeros where the box leaves the image. Differentiable w.r.t. both inputs.
    """
    if images.ndim != 4 or boxes.shape != (images.shape[0], 4):
        raise ValueError(f"images {tuple(images.shape)} must be (B, C, H, W) and boxes {tuple(boxes.shape)} (B, 4)")
    B, C, H, W = images.shape
    theta = crop_affine(boxes.to(images.dtype), (H, W))
    grid = F.affine_grid(theta, [B, C, size, size], align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def image_to_crop(points: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Map image pixel points ``(B, N, 2)`` into crop pixels ``(B, N, 2)`` of a ``size`` crop."""
    lo = boxes[:, None, :2]
    wh = boxes[:, None, 2:] - lo
    return (points - lo) * size / wh

"""Image preprocessing shared by every data source: torchvision transforms in OpenCLIP's recipe.

Training uses ``RandomResizedCrop(scale=(0.9, 1.0))`` (OpenCLIP's default: a mild crop, since the caption
describes the whole image and heavy cropping would cut the object the text talks about); evaluation uses
``Resize`` + ``CenterCrop``. Both resize with bicubic interpolation and normalise with the given mean/std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

__all__ = ["image_transform", "to_rgb"]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image to 3-channel RGB (grey, palette, RGBA and CMYK images occur in web data).

    A module-level function rather than a lambda so the transform pickles into spawned DataLoader workers.
    """
    # convert() always copies; skip it for the common case of an RGB JPEG.
    return image if image.mode == "RGB" else image.convert("RGB")


def image_transform(image_size: int, train: bool, mean: Sequence[float] = (0.5, 0.5, 0.5),
                    std: Sequence[float] = (0.5, 0.5, 0.5)) -> Callable[[Image.Image], torch.Tensor]:
    """Build the PIL image -> normalised ``(3, image_size, image_size)`` float tensor transform.

    Args:
        image_size: side of the square output in pixels.
        train: random resized crop (scale 0.9-1.0) if True, deterministic resize + centre crop if False.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by after subtracting the mean.

    Returns:
        A picklable callable mapping a PIL image of any mode and size to a float tensor.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    bicubic = T.InterpolationMode.BICUBIC
    # RGB conversion comes first: PIL resizes palette ("P") and 1-bit images with nearest-neighbour only,
    # whatever interpolation is asked for, so converting afterwards would alias.
    if train:
        geometry = [T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=bicubic)]
    else:
        geometry = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    return T.Compose([to_rgb, *geometry, T.ToTensor(), T.Normalize(mean=tuple(mean), std=tuple(std))])

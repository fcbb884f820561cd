"""``imagefolder:DIR``: images in class folders (``DIR/<class>/<image>``), decoded as they are read.

Spec: ``imagefolder:DIR[,resize=N][,crop=N|HxW][,mean=a/b/c][,std=a/b/c]``. ``DIR/train`` with
``DIR/test`` (else ``DIR/val``) are the two splits; a folder without them (or ``DIR/train`` alone)
has a fixed, stratified fifth held out for evaluation, the same in every stage whatever ``--seed``.
Classes are the sorted class folder names, as torchvision's ImageFolder numbers them, so a model
trained on such a tree reads its labels the same way. Nothing is held: the splits are streamed
through ``sources.user_data`` (only the calibration subset is decoded up front, as for any data).

Geometry (the model's input is C, H, W; ``crop`` must equal H, W): with ``resize=N`` the shorter
side goes to N (bilinear) and the centre is cropped, torchvision's ``Resize(N)`` then
``CenterCrop`` (ImageNet models: ``resize=256,crop=224``). Without it each image is scaled by the
least factor that covers the crop, then centre-cropped: for a square input that is the shorter
side to its size, and an image already at the model's size is passed through unresampled (a
fixed ImageNet-style margin would cut into data stored at model resolution, such as CIFAR PNGs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image  # Pillow comes with matplotlib, a dependency
from torch.utils.data import Subset

from hawq_onnx.errors import HawqError
from hawq_onnx.models.spec import ModelSpec
from hawq_onnx.sources.splits import (
    CALIBRATION_SIZE,
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    Dataset,
    stratified_holdout,
)
from hawq_onnx.sources.user_data import as_dataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPEC_KEYS = "resize=N, crop=N|HxW, mean=a/b/c, std=a/b/c"
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass(frozen=True)
class ImageOptions:
    resize: int | None = None
    crop: tuple[int, int] | None = None  # (H, W)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _positive(key: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise HawqError(f"imagefolder {key}={text!r}: give a positive whole number of pixels")
    return int(text)


def _floats(key: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split("/"))
    except ValueError:
        raise HawqError(f"imagefolder {key}={text!r}: give numbers separated by '/', e.g. 0.5/0.5/0.5") from None
    if not all(np.isfinite(values)) or (key == "std" and any(v <= 0 for v in values)):
        raise HawqError(f"imagefolder {key}={text!r}: values must be finite" + (" and positive" if key == "std" else ""))
    return values


def parse_spec(arg: str) -> tuple[Path, ImageOptions]:
    """The folder and options of ``imagefolder:ARG`` (ARG without the prefix)."""
    folder, *keywords = arg.split(",")
    if not folder:
        raise HawqError("imagefolder: give a folder, e.g. imagefolder:images or imagefolder:images,crop=224")
    values: dict[str, str] = {}
    for item in keywords:
        key, eq, value = item.partition("=")
        if not eq or key not in ("resize", "crop", "mean", "std"):
            raise HawqError(f"imagefolder option {item!r} is not one of {SPEC_KEYS} (a folder name cannot hold ',')")
        if key in values:
            raise HawqError(f"imagefolder option {key} is given twice")
        values[key] = value
    crop = None
    if "crop" in values:
        sides = values["crop"].lower().split("x")
        if len(sides) > 2 or not all(side.isdigit() and int(side) > 0 for side in sides):
            raise HawqError(f"imagefolder crop={values['crop']!r}: give N or HxW in whole pixels, "
                            "e.g. 224 or 32x48")
        crop = (int(sides[0]), int(sides[-1]))
    return Path(folder), ImageOptions(
        resize=_positive("resize", values["resize"]) if "resize" in values else None, crop=crop,
        mean=_floats("mean", values["mean"]) if "mean" in values else None,
        std=_floats("std", values["std"]) if "std" in values else None)


def _images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (subfolders too, as torchvision), sorted, hidden ones skipped."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top, f) for f in files if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return sorted(found)


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise HawqError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise HawqError(f"image folder {root} has no class folders: it must hold {root}/<class>/<image>")
    return classes


def _channel_values(values: tuple[float, ...] | None, fill: float, channels: int, what: str) -> np.ndarray:
    values = (fill,) if values is None else tuple(values)
    if len(values) not in (1, channels):
        raise HawqError(f"{what} has {len(values)} values, but the model takes {channels} channel(s)")
    return np.broadcast_to(np.asarray(values, np.float32), (channels,)).reshape(channels, 1, 1).copy()


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` as (float32 C,H,W tensor, class index) pairs, decoded per item.

    ``size`` is the model's (H, W); ``crop`` defaults to it and must agree with it (a mismatch
    would only show later as a shape error inside the model). ``mean``/``std`` (one value or one
    per channel) normalise the [0, 1] pixels; either left out is 0 / 1."""

    def __init__(self, root: str | Path, *, channels: int, size: tuple[int, int], resize: int | None = None,
                 crop: int | tuple[int, int] | None = None, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        if channels not in (1, 3):
            raise HawqError(f"image folders give 1- or 3-channel images; the model takes {channels} channels")
        crop = tuple(size) if crop is None else (crop, crop) if isinstance(crop, int) else tuple(crop)
        if crop != tuple(size):
            raise HawqError(f"crop {crop[0]}x{crop[1]} does not match the model's input {size[0]}x{size[1]}")
        if resize is not None and resize < max(crop):
            raise HawqError(f"resize {resize} is smaller than crop {crop[0]}x{crop[1]}: the shorter side must "
                            "cover the crop")
        self.root, self.mode, self.crop, self.resize = Path(root), "RGB" if channels == 3 else "L", crop, resize
        self.mean = _channel_values(mean, 0.0, channels, "mean")
        self.std = _channel_values(std, 1.0, channels, "std")
        self.classes = _class_folders(self.root)
        self.samples: list[Path] = []
        targets = []
        for index, name in enumerate(self.classes):
            found = _images(self.root / name)
            if not found:
                raise HawqError(f"class folder {self.root / name} holds no images ({', '.join(EXTENSIONS)})")
            self.samples += found
            targets += [index] * len(found)
        self.targets = np.asarray(targets, np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def _fit(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        ch, cw = self.crop
        if self.resize is None:
            scale = max(ch / h, cw / w)
            size = (max(cw, round(w * scale)), max(ch, round(h * scale)))
        elif w <= h:  # torchvision's rounding, so that a model sees what it was trained on
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        if size != (w, h):
            image = image.resize(size, Image.Resampling.BILINEAR)
        top, left = int(round((size[1] - ch) / 2.0)), int(round((size[0] - cw) / 2.0))
        return image.crop((left, top, left + cw, top + ch))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)  # decodes the whole file: a truncated one fails here
        except Exception as exc:  # PIL raises many types for a bad file
            raise HawqError(f"cannot decode image {path} ({exc.__class__.__name__})") from None
        pixels = np.asarray(self._fit(image), np.float32) / 255.0
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return torch.from_numpy((pixels - self.mean) / self.std), int(self.targets[index])


def _split_folders(root: Path) -> tuple[Path, Path | None]:
    """(training folder, evaluation folder or None for a hold-out)."""
    if (root / "train").is_dir():
        test = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
        return root / "train", test
    for name in ("test", "val"):
        if (root / name).is_dir():
            raise HawqError(f"image folder {root} has {name}/ but no train/: pass imagefolder:{root / name} to "
                            "use it alone")
    return root, None


def _holdout(folder: ImageFolder) -> np.ndarray:
    """Mask of the held-out images: decided from the labels alone, before anything is decoded."""
    held = stratified_holdout(folder.targets, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    if not held.any():
        raise HawqError(f"image folder {folder.root} holds too few images per class to hold a fifth out for "
                        "evaluation: add images, or give train/ and test/ folders")
    return held


def load(source: str, spec: ModelSpec, calibration_size: int = CALIBRATION_SIZE, seed: int = 0) -> Dataset:
    """The streamed splits of ``imagefolder:...`` for the model described by ``spec``."""
    root, opts = parse_spec(source.partition(":")[2])
    if len(spec.input_shape) != 3:
        raise HawqError(f"{source}: images are (C, H, W), but the model takes {tuple(spec.input_shape)}")
    channels, h, w = spec.input_shape

    def folder(path: Path) -> ImageFolder:
        return ImageFolder(path, channels=channels, size=(h, w), resize=opts.resize, crop=opts.crop,
                           mean=opts.mean or spec.mean, std=opts.std or spec.std)

    train_dir, test_dir = _split_folders(root)
    train = folder(train_dir)
    num_classes = spec.num_classes or len(train.classes)
    if len(train.classes) > num_classes:
        raise HawqError(f"{train_dir} has {len(train.classes)} class folders, but the model has {num_classes} outputs")
    if test_dir is not None:
        test = folder(test_dir)
        if test.classes != train.classes:
            raise HawqError(f"class folders differ between {train_dir} ({len(train.classes)}) and {test_dir} "
                            f"({len(test.classes)}): {', '.join(sorted(set(train.classes) ^ set(test.classes)))}")
        train_part, test_part = train, test
    else:
        held = _holdout(train)
        train_part = Subset(train, np.flatnonzero(~held).tolist())
        test_part = Subset(train, np.flatnonzero(held).tolist())
    dataset = as_dataset(train_part, test_part, num_classes=num_classes, seed=seed, calibration_size=calibration_size)
    return replace(dataset, name=source)


def sample_shape(arg: str) -> tuple[int, ...] | None:
    """(C, H, W) one sample of ``imagefolder:ARG`` will have, for a model that declares no shape:
    channels from the first image's mode, H, W from crop, else resize, else that image's size.
    None where nothing is readable (``load`` then says what is wrong)."""
    try:
        root, opts = parse_spec(arg)
        train_dir = _split_folders(root)[0]
        first = next(p for c in _class_folders(train_dir) for p in _images(train_dir / c))
        with Image.open(first) as image:
            channels, (w, h) = (1 if image.mode in _GRAY_MODES else 3), image.size
    except Exception:
        return None
    if opts.crop:
        return (channels, *opts.crop)
    return (channels, opts.resize, opts.resize) if opts.resize else (channels, h, w)

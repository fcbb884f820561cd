"""``imagefolder:DIR``: class-per-folder images decoded per item and streamed, never held whole."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hawq_onnx.cli._options import fold_image_options
from hawq_onnx.errors import HawqError
from hawq_onnx.models.registry import ZOO
from hawq_onnx.sources import imagefolder
from hawq_onnx.sources.data import load_data, sample_shape
from hawq_onnx.sources.imagefolder import ImageFolder, parse_spec
from hawq_onnx.sources.splits import Split
from hawq_onnx.sources.stream import StreamSplit

COLOURS = [(200, 30, 60), (20, 180, 90), (70, 90, 250), (250, 250, 10)]
DIGITS = ZOO["digits-cnn"]  # 1x8x8, 10 outputs, mean 0.5, std 0.5


def make_tree(root: Path, classes: int = 3, per_class: int = 8, size: tuple[int, int] = (12, 10),
              ext: str = "png", mode: str = "RGB") -> Path:
    """``root/c<i>/<j>.<ext>``: solid class colours, ``size`` = (W, H) as PIL counts."""
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.new("RGB", size, COLOURS[c % len(COLOURS)]).convert(mode).save(root / f"c{c}" / f"{j:02d}.{ext}")
    return root


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def cat(split) -> tuple[np.ndarray, np.ndarray]:
    parts = list(split.batches(64))
    return np.concatenate([x.numpy() for x, _ in parts]), np.concatenate([y.numpy() for _, y in parts])


# --- the items --------------------------------------------------------------------------------

def test_items_are_scaled_chw_tensors_with_class_indices(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "c1" / "UPPER.PNG").write_bytes((tmp_path / "c1" / "00.png").read_bytes())
    (tmp_path / "c1" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "c1" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()  # a hidden folder is no class
    folder = ImageFolder(tmp_path, channels=3, size=(8, 8))
    assert folder.classes == ["c0", "c1", "c2"] and len(folder) == 25
    assert folder.samples[8:10] == [tmp_path / "c1" / "00.png", tmp_path / "c1" / "01.png"]
    for index, label in ((0, 0), (12, 1), (24, 2)):
        x, y = folder[index]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 8, 8) and y == label
        expected = np.asarray(COLOURS[label], np.float32)[:, None, None] / 255
        np.testing.assert_allclose(x.numpy(), np.broadcast_to(expected, (3, 8, 8)), atol=1e-6)


def test_normalisation_and_grayscale(tmp_path):
    make_tree(tmp_path, classes=2, per_class=1)
    x, _ = ImageFolder(tmp_path, channels=3, size=(8, 8), mean=(0.5, 0.25, 0.0), std=(0.5,))[1]
    raw = np.asarray(COLOURS[1], np.float32) / 255
    np.testing.assert_allclose(x[:, 0, 0].numpy(), (raw - [0.5, 0.25, 0.0]) / 0.5, atol=1e-6)
    gray, _ = ImageFolder(tmp_path, channels=1, size=(8, 8))[1]
    luma = Image.new("RGB", (1, 1), COLOURS[1]).convert("L").getpixel((0, 0)) / 255
    assert tuple(gray.shape) == (1, 8, 8) and torch.allclose(gray, torch.full((1, 8, 8), luma))
    with pytest.raises(HawqError, match="mean has 2 values, but the model takes 3 channel"):
        ImageFolder(tmp_path, channels=3, size=(8, 8), mean=(0.5, 0.5))
    with pytest.raises(HawqError, match="1- or 3-channel"):
        ImageFolder(tmp_path, channels=2, size=(8, 8))


def test_geometry_resize_then_centre_crop(tmp_path):
    (tmp_path / "a").mkdir()
    image = noise((12, 10))  # W 12, H 10
    image.save(tmp_path / "a" / "x.png")

    def pixels(folder):
        return (folder[0][0].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)

    # No resize: the least scale covering 8x8 (0.8 -> 10x8), the centre 8 columns.
    expected = np.asarray(image.resize((10, 8), Image.Resampling.BILINEAR))[:, 1:9]
    np.testing.assert_array_equal(pixels(ImageFolder(tmp_path, channels=3, size=(8, 8))), expected)
    # resize=12: the shorter side (H) to 12, W to int(12 * 12 / 10) = 14, then the centre 8x8.
    expected = np.asarray(image.resize((14, 12), Image.Resampling.BILINEAR))[2:10, 3:11]
    np.testing.assert_array_equal(pixels(ImageFolder(tmp_path, channels=3, size=(8, 8), resize=12)), expected)
    # An image at the model's size is passed through, not resampled; a non-square crop.
    np.testing.assert_array_equal(pixels(ImageFolder(tmp_path, channels=3, size=(10, 12), crop=(10, 12))),
                                  np.asarray(image))
    with pytest.raises(HawqError, match="resize 7 is smaller than crop 8x8"):
        ImageFolder(tmp_path, channels=3, size=(8, 8), resize=7)
    with pytest.raises(HawqError, match="crop 6x6 does not match the model's input 8x8"):
        ImageFolder(tmp_path, channels=3, size=(8, 8), crop=6)


def test_bad_folders_and_files_are_named(tmp_path):
    with pytest.raises(HawqError, match="does not exist"):
        ImageFolder(tmp_path / "nope", channels=3, size=(8, 8))
    with pytest.raises(HawqError, match=f"{tmp_path} has no class folders"):
        ImageFolder(tmp_path, channels=3, size=(8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HawqError, match=f"class folder {tmp_path / 'empty'} holds no images"):
        ImageFolder(tmp_path, channels=3, size=(8, 8))
    make_tree(tmp_path / "d", classes=1, per_class=2, ext="jpg")
    (tmp_path / "d" / "c0" / "01.jpg").write_bytes(b"\xff\xd8 truncated")
    folder = ImageFolder(tmp_path / "d", channels=3, size=(8, 8))
    assert folder[0][1] == 0
    with pytest.raises(HawqError) as err:
        folder[1]
    assert str(err.value) == f"cannot decode image {tmp_path / 'd' / 'c0' / '01.jpg'} (UnidentifiedImageError)"


# --- the spec ---------------------------------------------------------------------------------

def test_spec_keywords():
    root, opts = parse_spec("some/dir,resize=16,crop=8x6,mean=0.5/0.4/0.3,std=0.25")
    assert root == Path("some/dir") and opts.resize == 16 and opts.crop == (8, 6)
    assert opts.mean == (0.5, 0.4, 0.3) and opts.std == (0.25,)
    assert parse_spec("d,crop=9")[1].crop == (9, 9) and parse_spec("d")[1] == imagefolder.ImageOptions()
    for bad, message in [("", "give a folder"), ("d,size=3", "'size=3' is not one of resize"),
                         ("d,16", "'16' is not one of"), ("d,resize=8,resize=9", "resize is given twice"),
                         ("d,resize=0", "resize='0': give a positive"), ("d,resize=x", "resize='x'"),
                         ("d,crop=8x", "crop='8x'"), ("d,mean=a/b", "mean='a/b': give numbers"),
                         ("d,std=0.5/0", "std='0.5/0': values must be finite and positive"),
                         ("d,mean=nan", "must be finite")]:
        with pytest.raises(HawqError, match=message):
            parse_spec(bad)


def test_cli_flags_fold_into_the_spec():
    assert fold_image_options("imagefolder:d", 16, "8", "0.5,0.5,0.5", None) == \
        "imagefolder:d,resize=16,crop=8,mean=0.5/0.5/0.5"
    assert fold_image_options("digits", None, None, None, None) == "digits"
    with pytest.raises(HawqError, match=r"^--resize, --std are for --data imagefolder:DIR only \(--data digits\)$"):
        fold_image_options("digits", 9, None, None, "1")
    with pytest.raises(HawqError, match="crop is given both in --data and as --crop"):
        fold_image_options("imagefolder:d,crop=8", None, "8", None, None)
    with pytest.raises(HawqError, match="mean='1/x'"):
        fold_image_options("imagefolder:d", None, None, "1,x", None)


# --- load_data ----------------------------------------------------------------------------------

def test_load_data_streams_and_reads_again_each_pass(tmp_path, monkeypatch):
    make_tree(tmp_path, classes=3, per_class=10, size=(8, 8), mode="L")
    decoded = []
    original = ImageFolder.__getitem__
    monkeypatch.setattr(ImageFolder, "__getitem__", lambda self, i: decoded.append(i) or original(self, i))
    ds = load_data(f"imagefolder:{tmp_path}", DIGITS, calibration_size=5)
    assert isinstance(ds.train, StreamSplit) and isinstance(ds.test, StreamSplit) and isinstance(ds.calib, Split)
    assert ds.name == f"imagefolder:{tmp_path}" and ds.num_classes == 10 and ds.labels_given
    assert len(ds.train) == 24 and len(ds.test) == 6 and len(ds.calib) == 5 and ds.train.sample_shape == (1, 8, 8)
    before = len(decoded)
    x, y = cat(ds.train)
    assert len(decoded) - before == 24  # every pass decodes again: nothing is kept
    cat(ds.train)
    assert len(decoded) - before == 48
    assert x.shape == (24, 1, 8, 8) and sorted(np.bincount(y)) == [8, 8, 8]
    luma = Image.new("RGB", (1, 1), COLOURS[0]).convert("L").getpixel((0, 0)) / 255
    np.testing.assert_allclose(x[y == 0], (luma - 0.5) / 0.5, atol=1e-6)  # the model's mean and std
    # A stratified fifth, fixed whatever --seed: every stage evaluates on the same images.
    test_x, test_y = cat(ds.test)
    assert np.bincount(test_y).tolist() == [2, 2, 2]
    again = load_data(f"imagefolder:{tmp_path},mean=0,std=1", DIGITS, seed=7)
    np.testing.assert_array_equal(cat(again.test)[1], test_y)
    np.testing.assert_allclose(cat(again.test)[0], test_x * 0.5 + 0.5, atol=1e-6)  # the spec's own mean/std


def test_train_and_test_folders(tmp_path):
    make_tree(tmp_path / "train", per_class=4, size=(8, 8))
    make_tree(tmp_path / "val", per_class=2, size=(8, 8))
    spec = replace(DIGITS, class_names=None)
    ds = load_data(f"imagefolder:{tmp_path}", spec)
    assert (len(ds.train), len(ds.test), ds.num_classes, ds.samples) == (12, 6, 3, 12)
    assert isinstance(ds.train, StreamSplit)
    make_tree(tmp_path / "test", classes=4, per_class=1, size=(8, 8))  # test/ wins over val/
    with pytest.raises(HawqError, match=r"class folders differ between .*train \(3\) and .*test \(4\): c3"):
        load_data(f"imagefolder:{tmp_path}", spec)
    make_tree(tmp_path / "only" / "val", per_class=1, size=(8, 8))
    with pytest.raises(HawqError, match="has val/ but no train/: pass imagefolder:.*only/val to use it alone"):
        load_data(f"imagefolder:{tmp_path / 'only'}", spec)
    make_tree(tmp_path / "many", classes=11, per_class=2, size=(8, 8))
    with pytest.raises(HawqError, match="has 11 class folders, but the model has 10 outputs"):
        load_data(f"imagefolder:{tmp_path / 'many'}", DIGITS)
    with pytest.raises(HawqError, match="too few images per class"):
        load_data(f"imagefolder:{make_tree(tmp_path / 'few', per_class=2, size=(8, 8))}", DIGITS)


def test_sample_shape(tmp_path):
    make_tree(tmp_path / "rgb")
    make_tree(tmp_path / "gray", mode="L")
    assert sample_shape(f"imagefolder:{tmp_path / 'rgb'}") == (3, 10, 12)
    assert sample_shape(f"imagefolder:{tmp_path / 'gray'},crop=8") == (1, 8, 8)
    assert sample_shape(f"imagefolder:{tmp_path / 'rgb'},resize=9") == (3, 9, 9)
    assert sample_shape(f"imagefolder:{tmp_path / 'missing'}") is None
    assert sample_shape(f"imagefolder:{tmp_path / 'rgb'},bad=1") is None


# --- the command line -------------------------------------------------------------------------

def hawq(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from hawq_onnx.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_analyze_on_an_image_folder(tmp_path):
    make_tree(tmp_path / "imgs", classes=4, per_class=10, size=(8, 8), mode="L")
    done = hawq("analyze", "--model", "digits-cnn", "--data", f"imagefolder:{tmp_path / 'imgs'}",
                "--mean", "0.5", "--batch-size", "16", "--max-probes", "8", "--sketch", "0", "--out", "s.json",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["layers"] and "analysed" in done.stdout
    bad = hawq("analyze", "--data", "digits", "--resize", "9", "--out", "t.json", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --resize is for --data imagefolder:DIR only")
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "t.json").exists()

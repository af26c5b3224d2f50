"""The batched pHash against imagehash, the reference implementation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defenses.phash import grey, hamming, phash

imagehash = pytest.importorskip("imagehash")
SHARED = Path(os.environ.get("DFL_SIM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def reference(x: np.ndarray) -> np.ndarray:
    """``imagehash.phash`` image by image, as uint64."""
    mode = "L" if x.shape[1] == 1 else "RGB"
    imgs = [Image.fromarray(im[0] if mode == "L" else im.transpose(1, 2, 0), mode) for im in x]
    return np.array([int(str(imagehash.phash(im)), 16) for im in imgs], dtype=np.uint64)


def test_grey_is_pils_convert_L():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 3, 5, 7), dtype=np.uint8)
    ref = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0), "RGB").convert("L")) for im in x])
    assert np.array_equal(grey(x), ref)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 32, 32), (1, 28, 28), (3, 20, 24)])
def test_matches_imagehash_on_random_images(shape):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (64, *shape), dtype=np.uint8)
    ref = reference(x)
    assert np.array_equal(phash(x, exact=True), ref)
    assert np.mean(phash(x) == ref) >= 0.99


def test_matches_imagehash_on_digits():
    from dfl.config import Spec
    from dfl.data import load_dataset

    d = load_dataset(Spec(name="digits"))
    x = d.x_test[:300]
    assert np.mean(phash(x) == reference(x)) >= 0.99


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").is_file(), reason="the shared CIFAR-10 archive is absent")
def test_matches_imagehash_on_real_cifar10_bit_for_bit():
    from dfl.config import Spec
    from dfl.data import load_dataset

    d = load_dataset(Spec(name="cifar10"), SHARED)
    x = d.x_test[::5]  # 2,000 real test images
    ref = reference(x)
    agree = np.mean(phash(x) == ref)
    assert agree >= 0.99, agree
    assert np.array_equal(phash(x, exact=True), ref)


def test_hamming_distance():
    a = np.array([0, 0xFFFF_FFFF_FFFF_FFFF, 0b1011], dtype=np.uint64)
    b = np.array([1, 0, 0b0001], dtype=np.uint64)
    assert hamming(a, b).tolist() == [1, 64, 2]

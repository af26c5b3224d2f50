"""Gradient inversion: pseudo-gradients, image metrics, DLG, iDLG and Inverting Gradients.

Synthetic tests (8x8 images, small nets) always run; the acceptance checks on real CIFAR-10 images
run when ``shared/datasets/cifar10-jpeg.tar.gz`` is present beside the checkout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from attacks.dlg import dlg, uniform_init_
from attacks.idlg import idlg, infer_labels
from attacks.inverting_gradients import inverting_gradients, pixel_box
from dfl.adversary.gradients import Reconstruction, gradient_of, pseudo_gradient
from dfl.config import Spec
from dfl.federation.participant import flatten_into_views
from dfl.metrics.images import mse, pair, psnr, ssim, ssim_window, to_pixels
from dfl.models import build_model

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CIFAR_ARCHIVE = DATA_ROOT / "cifar10-jpeg.tar.gz"
needs_cifar = pytest.mark.skipif(
    not CIFAR_ARCHIVE.exists(), reason=f"CIFAR-10 archive not found at {CIFAR_ARCHIVE} (not shipped with CI)"
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` pixel images in [0, 1]: bilinear upsampling of 4x4 noise, like blurry photos."""
    low = torch.rand((n, 3, 4, 4), generator=gen(seed))
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def lenet(size: int = 8, seed: int = 0) -> torch.nn.Module:
    model = build_model(Spec(name="lenet"), (3, size, size), 10)
    uniform_init_(model, gen(seed))
    return model


def small_cnn(size: int = 8, seed: int = 0, norm: str = "none") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(Spec(name="cnn", params={"channels": [8, 16], "hidden": 32, "norm": norm}), (3, size, size), 10)


# ---------------------------------------------------------------------------------- pseudo-gradients


def test_pseudo_gradient_is_the_gradient_after_one_plain_sgd_step() -> None:
    model = small_cnn(norm="batch")  # BatchNorm: float buffers follow the parameters in the flat state
    flat = flatten_into_views(model)
    x, y = torch.randn(4, 3, 8, 8, generator=gen(1)), torch.tensor([0, 3, 3, 7])
    before = flat.clone()
    grads = gradient_of(model, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    update = flat - before
    n_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert n_buffers > 0 and update[-n_buffers:].abs().sum() > 0  # running statistics moved too
    for full in (update, update[:-n_buffers]):
        pseudo = pseudo_gradient(model, full, lr=0.1, steps=1)
        assert [p.shape for p in pseudo] == [p.shape for p in model.parameters()]
        for p, g in zip(pseudo, grads, strict=True):
            torch.testing.assert_close(p, g, atol=2e-6, rtol=1e-4)


def test_pseudo_gradient_of_several_steps_is_the_mean_gradient_scaled() -> None:
    model = small_cnn()
    update = torch.randn(sum(p.numel() for p in model.parameters()), generator=gen(0))
    one, five = pseudo_gradient(model, update, 0.1, 1), pseudo_gradient(model, update, 0.1, 5)
    for a, b in zip(one, five, strict=True):
        torch.testing.assert_close(a, 5 * b)


def test_pseudo_gradient_rejects_an_update_of_another_model() -> None:
    with pytest.raises(ValueError, match="does not fit this model: expected"):
        pseudo_gradient(small_cnn(), torch.zeros(7), 0.1, 1)
    with pytest.raises(ValueError, match="lr > 0"):
        pseudo_gradient(small_cnn(), torch.zeros(7), 0.0, 1)


def test_gradient_of_one_hot_soft_labels_equals_hard_labels() -> None:
    model = lenet()
    x, y = torch.randn(3, 3, 8, 8, generator=gen(2)), torch.tensor([1, 4, 9])
    hard = gradient_of(model, x, y)
    soft = gradient_of(model, x, F.one_hot(y, 10).float())
    for a, b in zip(hard, soft, strict=True):
        torch.testing.assert_close(a, b)
    assert all(not g.requires_grad for g in hard)


# ---------------------------------------------------------------------------------- metrics


def test_identical_images_have_zero_error_infinite_psnr_and_ssim_one() -> None:
    x = torch.rand(3, 3, 8, 8, generator=gen(0))
    assert np.all(mse(x, x) == 0)
    assert np.all(np.isinf(psnr(x, x)))
    np.testing.assert_allclose(ssim(x, x), 1.0)


def test_psnr_and_mse_known_values_in_pixel_space() -> None:
    truth = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
    recon = truth + torch.tensor([0.1, 0.01], dtype=torch.float64).view(2, 1, 1, 1)
    np.testing.assert_allclose(mse(recon, truth), [1e-2, 1e-4], rtol=1e-9)
    np.testing.assert_allclose(psnr(recon, truth), [20.0, 40.0], rtol=1e-9)
    # the same pixels seen through a normalisation: metrics are taken after undoing it
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    np.testing.assert_allclose(psnr((recon - m) / s, (truth - m) / s, mean, std), [20.0, 40.0], rtol=1e-6)


def test_pixels_are_clipped_to_the_unit_range() -> None:
    x = torch.tensor([-1.0, 0.5, 2.0]).view(1, 1, 1, 3)
    np.testing.assert_array_equal(to_pixels(x), [[[[0.0, 0.5, 1.0]]]])
    assert to_pixels(x[0]).shape == (1, 1, 1, 3)


def test_ssim_equals_scikit_image_on_random_images() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 3, 16, 16)), rng.random((4, 3, 16, 16))
    b[:2] = np.clip(a[:2] + 0.05 * rng.standard_normal(a[:2].shape), 0, 1)
    want = [structural_similarity(p, q, data_range=1.0, channel_axis=0) for p, q in zip(a, b, strict=True)]
    np.testing.assert_allclose(ssim(a, b), want, rtol=1e-12)
    assert ssim(a, b)[0] > 0.5 > ssim(a, b)[3]


def test_ssim_window_shrinks_for_small_images() -> None:
    assert [ssim_window(s, s) for s in (32, 7, 6, 5, 4, 3)] == [7, 7, 5, 5, 3, 3]
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 3, 4, 5)), rng.random((2, 3, 4, 5))
    want = [structural_similarity(p, q, data_range=1.0, channel_axis=0, win_size=3) for p, q in zip(a, b, strict=True)]
    np.testing.assert_allclose(ssim(a, b), want, rtol=1e-12)
    with pytest.raises(ValueError, match="at least 3x3"):
        ssim(a[:, :, :2], b[:, :, :2])


def test_pair_recovers_a_shuffled_batch() -> None:
    truth = torch.rand(6, 3, 8, 8, generator=gen(3))
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    recon = truth[perm] + 0.05 * torch.randn(truth.shape, generator=gen(4))
    order = pair(recon, truth)  # recon k <-> truth order[k]
    assert np.array_equal(order, perm.numpy())
    assert np.all(psnr(recon, truth[order]) > 20)
    assert np.array_equal(pair(truth[perm], truth), perm.numpy())  # exact copies
    assert np.array_equal(pair(recon[:2], truth), perm.numpy()[:2])  # more originals than reconstructions
    with pytest.raises(ValueError, match="at least as many originals"):
        pair(recon, truth[:3])


def test_pair_is_the_brute_force_minimum_of_total_mse() -> None:
    """The Hungarian pairing against the slow obvious search over every assignment."""
    import itertools

    truth = torch.rand(5, 1, 4, 4, generator=gen(5))
    recon = torch.rand(3, 1, 4, 4, generator=gen(6))
    err = [[float(mse(recon[k : k + 1], truth[j : j + 1])[0]) for j in range(5)] for k in range(3)]
    best = min(itertools.permutations(range(5), 3), key=lambda js: sum(err[k][j] for k, j in enumerate(js)))
    assert list(pair(recon, truth)) == list(best)


# ---------------------------------------------------------------------------------- iDLG labels


@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_idlg_recovers_every_label_of_single_images(arch: str) -> None:
    model = lenet() if arch == "lenet" else small_cnn()
    x = torch.randn(20, 3, 8, 8, generator=gen(5))
    y = torch.arange(20) % 10
    for xi, yi in zip(x, y, strict=True):
        grads = gradient_of(model, xi[None], yi[None])
        assert infer_labels(model, grads, 1).tolist() == [int(yi)]


def test_idlg_labels_of_a_batch_are_a_best_effort_of_the_right_size() -> None:
    model = lenet()
    x, y = torch.randn(4, 3, 8, 8, generator=gen(6)), torch.tensor([2, 2, 5, 8])
    labels = infer_labels(model, gradient_of(model, x, y), 4)
    assert labels.shape == (4,) and labels.dtype == torch.long
    assert set(labels.tolist()) <= {2, 5, 8} and labels.tolist() == sorted(labels.tolist())
    with pytest.raises(ValueError, match="batch_size must be"):
        infer_labels(model, gradient_of(model, x, y), 0)


def test_idlg_needs_a_linear_classifier() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 10, 8), torch.nn.Flatten())
    grads = gradient_of(conv, torch.randn(1, 3, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="pass the labels explicitly"):
        infer_labels(conv, grads, 1)


# ---------------------------------------------------------------------------------- attacks on synthetic images


def test_dlg_reconstructs_a_small_image_and_its_label() -> None:
    model, truth, y = lenet(), smooth_images(1), torch.tensor([6])
    rec = dlg(model, gradient_of(model, truth, y), 1, 10, (3, 8, 8), iterations=50, generator=gen(0))
    assert isinstance(rec, Reconstruction)
    assert rec.images.shape == (1, 3, 8, 8) and rec.labels.tolist() == [6]
    assert rec.iterations == len(rec.loss_history) <= 50 and rec.seconds > 0
    assert rec.loss_history[-1] < 1e-3 * rec.loss_history[0]
    assert psnr(rec.images, truth)[0] >= 30


def test_idlg_reconstructs_a_small_image_with_the_inferred_label() -> None:
    model, truth, y = lenet(seed=1), smooth_images(1, seed=1), torch.tensor([3])
    rec = idlg(model, gradient_of(model, truth, y), 1, 10, (3, 8, 8), iterations=50, generator=gen(1))
    assert rec.labels.tolist() == [3]
    assert psnr(rec.images, truth)[0] >= 30
    with pytest.raises(ValueError, match="num_classes"):
        idlg(model, gradient_of(model, truth, y), 1, 7, (3, 8, 8), generator=gen(1))


def test_inverting_gradients_improves_on_noise_and_stays_in_the_pixel_box() -> None:
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.25, 0.2, 0.3])
    m, s = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    truth = (smooth_images(1, seed=2) - m) / s
    torch.manual_seed(0)
    model, y = build_model(Spec(name="cnn"), (3, 8, 8), 10), torch.tensor([4])
    grads = gradient_of(model, truth, y)
    rec = inverting_gradients(model, grads, None, (3, 8, 8), batch_size=1, iterations=200, generator=gen(2), mean=mean, std=std)
    assert rec.labels.tolist() == [4]
    assert rec.iterations == len(rec.loss_history) == 200
    lo, hi = pixel_box(3, mean, std, torch.device("cpu"))
    assert torch.all(rec.images >= lo - 1e-6) and torch.all(rec.images <= hi + 1e-6)
    noise = torch.randn(truth.shape, generator=gen(2))
    assert psnr(rec.images, truth, mean, std)[0] >= 25 > psnr(noise, truth, mean, std)[0] + 10
    assert min(rec.loss_history) < 0.1 * rec.loss_history[0]


def test_inverting_gradients_keeps_the_best_restart() -> None:
    model, truth, y = small_cnn(), smooth_images(2, seed=3), torch.tensor([1, 2])
    grads = gradient_of(model, truth, y)
    one = inverting_gradients(model, grads, y, (3, 8, 8), iterations=30, restarts=1, generator=gen(3))
    three = inverting_gradients(model, grads, y, (3, 8, 8), iterations=30, restarts=3, generator=gen(3))
    flat = torch.cat([g.flatten() for g in grads])
    final = [float(F.cosine_similarity(torch.cat([g.flatten() for g in gradient_of(model, r.images, y)]), flat, dim=0))
             for r in (one, three)]
    assert final[1] >= final[0] - 1e-6  # the first restart of both is the same draw, the best one is kept
    with pytest.raises(ValueError, match="batch_size"):
        inverting_gradients(model, grads, None, (3, 8, 8), generator=gen(3))


def test_the_same_seed_gives_the_same_reconstruction() -> None:
    model, truth, y = lenet(), smooth_images(2, seed=4), torch.tensor([0, 9])
    grads = gradient_of(model, truth, y)
    a = dlg(model, grads, 2, 10, (3, 8, 8), iterations=5, generator=gen(7))
    b = dlg(model, grads, 2, 10, (3, 8, 8), iterations=5, generator=gen(7))
    c = dlg(model, grads, 2, 10, (3, 8, 8), iterations=5, generator=gen(8))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.loss_history == b.loss_history
    assert not torch.equal(a.images, c.images)
    cnn = small_cnn()
    grads = gradient_of(cnn, truth, y)
    p = inverting_gradients(cnn, grads, y, (3, 8, 8), iterations=20, restarts=2, generator=gen(7))
    q = inverting_gradients(cnn, grads, y, (3, 8, 8), iterations=20, restarts=2, generator=gen(7))
    assert torch.equal(p.images, q.images) and p.loss_history == q.loss_history


# ---------------------------------------------------------------------------------- CIFAR-10 acceptance checks


@pytest.fixture(scope="module")
def cifar() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """CIFAR-10 test images ``(N, 3, 32, 32)`` normalised with the training set's channel statistics."""
    from dfl.data import channel_stats, load_dataset, to_float

    data = load_dataset(Spec(name="cifar10"), DATA_ROOT)
    mean, std = channel_stats(data.x_train)
    idx = np.arange(10) * 1000 + 7  # one image of each class (the test split is sorted by class)
    return to_float(data.x_test[idx], mean, std), torch.as_tensor(data.y_test[idx]), mean, std


@needs_cifar
def test_dlg_reconstructs_a_cifar_image_on_the_sigmoid_lenet(cifar) -> None:
    x, y, mean, std = cifar
    i = 3
    model = build_model(Spec(name="lenet"), (3, 32, 32), 10)
    uniform_init_(model, gen(i))
    rec = dlg(model, gradient_of(model, x[i : i + 1], y[i : i + 1]), 1, 10, (3, 32, 32), iterations=150, generator=gen(i))
    assert rec.labels.tolist() == [int(y[i])]
    assert psnr(rec.images, x[i : i + 1], mean, std)[0] >= 30


@needs_cifar
def test_idlg_recovers_every_cifar_label_at_init_and_after_training(cifar) -> None:
    x, y, _, _ = cifar
    x, y = torch.cat([x, x.flip(-1)]), torch.cat([y, y])  # 20 images, two of each class
    lenet32 = build_model(Spec(name="lenet"), (3, 32, 32), 10)
    uniform_init_(lenet32, gen(0))
    torch.manual_seed(0)
    cnn = build_model(Spec(name="cnn"), (3, 32, 32), 10)
    trained = build_model(Spec(name="cnn"), (3, 32, 32), 10)
    trained.load_state_dict(cnn.state_dict())
    opt = torch.optim.SGD(trained.parameters(), lr=0.05)
    for _ in range(30):  # fit the 20 images until the model is confident on them
        opt.zero_grad()
        F.cross_entropy(trained(x), y).backward()
        opt.step()
    assert (trained(x).argmax(1) == y).float().mean() > 0.5
    for model in (lenet32, cnn, trained):
        found = [infer_labels(model, gradient_of(model, xi[None], yi[None]), 1).item() for xi, yi in zip(x, y, strict=True)]
        assert found == y.tolist()


@needs_cifar
def test_inverting_gradients_reconstructs_a_cifar_image_on_the_cnn(cifar) -> None:
    x, y, mean, std = cifar
    i = 3
    torch.manual_seed(i)
    model = build_model(Spec(name="cnn"), (3, 32, 32), 10)
    rec = inverting_gradients(
        model, gradient_of(model, x[i : i + 1], y[i : i + 1]), y[i : i + 1], (3, 32, 32),
        iterations=2000, generator=gen(i), mean=mean, std=std,
    )
    assert psnr(rec.images, x[i : i + 1], mean, std)[0] >= 22
    assert ssim(rec.images, x[i : i + 1], mean, std)[0] >= 0.7

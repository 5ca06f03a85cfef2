"""Training-time augmentation: real transforms of uint8 batches, repeatable, and only where training asks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.augment import Augmentation, augment_batch, cutmix, mixup
from core.feeder import Feeder

NONE = Augmentation(rotation_deg=0, zoom=0, translation=0, contrast=0, flip=False)


def blob_batch(n: int = 16, size: int = 48, channels: int = 3) -> np.ndarray:
    """A bright disc left of centre on a dark, textured background."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 60, (n, size, size, channels), dtype=np.uint8)
    for image in batch:
        cv2.circle(image, (size // 3, size // 2), size // 8, (255,) * channels, -1)
    return batch


def centroid_x(image: np.ndarray) -> float:
    bright = image.mean(axis=-1) > 200
    return float(np.nonzero(bright)[1].mean())


def test_the_output_is_a_new_uint8_batch_of_the_same_shape():
    batch = blob_batch()
    before = batch.copy()
    out = augment_batch(batch, np.random.default_rng(1))
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(batch, before)
    assert not np.array_equal(out, batch)


def test_the_same_generator_seed_gives_the_same_batch_and_another_seed_does_not():
    batch = blob_batch()
    first = augment_batch(batch, np.random.default_rng(5))
    np.testing.assert_array_equal(first, augment_batch(batch, np.random.default_rng(5)))
    assert not np.array_equal(first, augment_batch(batch, np.random.default_rng(6)))


def test_with_every_range_at_zero_nothing_changes():
    batch = blob_batch()
    np.testing.assert_array_equal(augment_batch(batch, np.random.default_rng(0), NONE), batch)


def test_a_flip_mirrors_left_and_right_about_half_the_time():
    batch = blob_batch(n=64)
    out = augment_batch(batch, np.random.default_rng(2), Augmentation(0, 0, 0, 0, flip=True))
    mirrored = [np.array_equal(o, b[:, ::-1]) for o, b in zip(out, batch, strict=True)]
    kept = [np.array_equal(o, b) for o, b in zip(out, batch, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 16 <= sum(mirrored) <= 48


def test_a_shift_moves_the_subject_by_at_most_the_translation_range():
    batch = blob_batch(n=32, size=60)
    out = augment_batch(batch, np.random.default_rng(3), Augmentation(0, 0, 0.1, 0, flip=False))
    moves = np.array([centroid_x(o) - centroid_x(b) for o, b in zip(out, batch, strict=True)])
    assert np.abs(moves).max() <= 0.1 * 60 + 1
    assert np.abs(moves).max() >= 2  # it did move


def test_rotation_and_zoom_keep_the_subject_and_fill_the_corners_without_black():
    batch = np.full((8, 48, 48, 3), 128, np.uint8)
    cv2.circle(batch[0], (24, 24), 6, (255, 255, 255), -1)
    out = augment_batch(batch, np.random.default_rng(4), Augmentation(18, 0.15, 0, 0, flip=False))
    assert out.min() >= 127  # reflected borders: no black wedges from the rotation
    assert (out[0] > 200).sum() > 40  # the disc survives


def test_contrast_changes_spread_but_not_mean_level():
    batch = np.random.default_rng(1).integers(80, 176, (16, 32, 32, 3), dtype=np.uint8)  # room to spread
    out = augment_batch(batch, np.random.default_rng(7), Augmentation(0, 0, 0, 0.3, flip=False))
    spread = out.reshape(16, -1).std(axis=1) / batch.reshape(16, -1).std(axis=1)
    assert spread.min() < 0.95 and spread.max() > 1.05
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), batch.mean(axis=(1, 2, 3)), atol=3)


def test_grayscale_batches_keep_their_channel_axis():
    out = augment_batch(blob_batch(channels=1), np.random.default_rng(0))
    assert out.shape == (16, 48, 48, 1)


def test_anything_but_a_uint8_batch_is_refused():
    with pytest.raises(ValueError, match="uint8 batch"):
        augment_batch(np.zeros((2, 8, 8, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8 batch"):
        augment_batch(np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0))


def test_the_training_feeder_augments_repeatably_and_the_plain_feeder_does_not():
    x, y = blob_batch(n=40), np.arange(40) % 2
    plain = Feeder(x, y, 16, shuffle_seed=9)
    augmented = Feeder(x, y, 16, shuffle_seed=9, augment=True)
    (px, py), (ax, ay) = plain[0], augmented[0]
    np.testing.assert_array_equal(py, ay)  # the same photos, the same labels
    assert px.dtype == ax.dtype == np.float32 and px.shape == ax.shape
    np.testing.assert_allclose(px, x[np.sort(plain.order[:16])] / 255, atol=1e-6)
    assert not np.array_equal(px, ax)
    np.testing.assert_array_equal(ax, augmented[0][0])  # the same epoch and batch: the same draw
    augmented.on_epoch_end()
    assert not np.array_equal(ax, augmented[0][0]) or not np.array_equal(ay, augmented[0][1])


def test_an_output_size_scales_in_the_same_warp_like_cv2_resize():
    batch = blob_batch(size=48)
    small = augment_batch(batch, np.random.default_rng(0), NONE, size=24)
    assert small.shape == (16, 24, 24, 3) and small.dtype == np.uint8
    for image, out in zip(batch, small, strict=True):  # the same pixel-centre mapping as cv2.resize
        expected = cv2.resize(image, (24, 24), interpolation=cv2.INTER_LINEAR)
        assert np.abs(out.astype(int) - expected).max() <= 1
    shift = Augmentation(rotation_deg=0, zoom=0, translation=0.1, contrast=0, flip=False)
    moved = augment_batch(batch, np.random.default_rng(3), shift, size=32)
    assert moved.shape == (16, 32, 32, 3)
    for m, b in zip(moved, batch, strict=True):  # the shift is a fraction of the side, at either size
        assert abs(centroid_x(m) - (centroid_x(b) + 0.5) * 32 / 48 + 0.5) <= 0.1 * 32 + 0.5


def test_the_feeder_trains_at_a_smaller_size_with_or_without_augmentation():
    x, y = blob_batch(n=40, size=48), np.arange(40) % 2
    for augment in (True, False):
        px, _ = Feeder(x, y, 16, shuffle_seed=9, augment=augment, size=32)[0]
        assert px.shape == (16, 32, 32, 3) and px.dtype == np.float32
    gray = Feeder(x[..., :1].copy(), y, 16, shuffle_seed=9, size=32)[0][0]
    assert gray.shape == (16, 32, 32, 1)


def test_random_erasing_replaces_one_rectangle_of_the_share_of_photos_it_is_asked_for():
    batch = np.full((200, 48, 48, 3), 128, np.uint8)  # flat grey: any changed pixel was erased
    base = Augmentation(0, 0, 0, 0, flip=False)
    np.testing.assert_array_equal(augment_batch(batch, np.random.default_rng(3), base), batch)
    out = augment_batch(batch, np.random.default_rng(3), Augmentation(0, 0, 0, 0, flip=False, erase=0.5))
    changed = (out != 128).any(axis=-1)  # (N, H, W): pixels the noise replaced
    erased = changed.any(axis=(1, 2))
    assert 70 <= erased.sum() <= 130  # about half the photos
    for mask in changed[erased]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert mask.sum() >= 0.95 * box  # one rectangle (a noise pixel may land on 128)
        assert 0.01 * 48 * 48 <= box <= 0.3 * 48 * 48


def test_erasing_is_off_by_default_and_draws_after_the_other_transforms():
    batch = blob_batch()
    plain = augment_batch(batch, np.random.default_rng(4))
    erased = augment_batch(batch, np.random.default_rng(4), Augmentation(erase=1.0))
    assert not np.array_equal(plain, erased)
    same = (plain == erased).all(axis=(1, 2, 3))
    assert not same.any()  # every photo got its rectangle, on top of the same warp
    assert ((plain == erased).mean(axis=(1, 2, 3)) > 0.7).all()


def test_cutmix_pastes_one_box_of_another_photo_and_mixes_the_labels_by_its_area():
    n, size = 200, 40
    batch = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], size * size * 3).reshape(n, size, size, 3)
    labels = (np.arange(n) % 2).astype(np.float32)  # photo k is flat grey k: a pixel's value names its photo
    out, mixed = cutmix(batch, labels, np.random.default_rng(7), share=0.5)
    np.testing.assert_array_equal(batch[:, 0, 0, 0], np.arange(n))  # the input is not changed
    assert mixed.dtype == np.float32 and ((mixed >= 0) & (mixed <= 1)).all()
    pasted = out[..., 0] != np.arange(n, dtype=np.uint8)[:, None, None]  # (N, H, W)
    areas = pasted.mean(axis=(1, 2))
    assert 70 <= (areas > 0).sum() <= 130  # about half the photos (less the few that drew themselves)
    for k in np.flatnonzero(areas):
        sources = np.unique(out[k][pasted[k]][:, 0])
        assert len(sources) == 1  # one other photo's pixels
        rows, cols = np.flatnonzero(pasted[k].any(axis=1)), np.flatnonzero(pasted[k].any(axis=0))
        assert pasted[k].sum() == len(rows) * len(cols)  # one box
        assert mixed[k] == pytest.approx((1 - areas[k]) * labels[k] + areas[k] * labels[sources[0]])
    np.testing.assert_array_equal(mixed[areas == 0], labels[areas == 0])
    assert 0.15 < areas[areas > 0].mean() < 0.5  # uniform area, less what the borders clip


def test_cutmix_in_the_feeder_gives_soft_labels_on_top_of_the_same_warps_and_is_off_by_default():
    x = blob_batch(32)
    y = np.arange(32) % 2
    plain_px, plain_y = Feeder(x, y, 32, shuffle_seed=3, augment=Augmentation())[0]
    mixed_px, mixed_y = Feeder(x, y, 32, shuffle_seed=3, augment=Augmentation(cutmix=1.0))[0]
    np.testing.assert_array_equal(plain_y, y.astype(np.float32))  # one batch of all 32, in order: hard labels
    soft = (mixed_y > 0) & (mixed_y < 1)
    assert soft.sum() >= 8 and not np.array_equal(plain_px, mixed_px)
    untouched = (plain_px == mixed_px).all(axis=(1, 2, 3))
    np.testing.assert_array_equal(mixed_y[untouched], plain_y[untouched])  # same warp, nothing pasted, same label
    assert (plain_px == mixed_px).mean() > 0.3  # the warps are the same; only the boxes differ


def test_mixup_blends_each_chosen_photo_with_one_other_and_mixes_the_labels_by_the_same_weight():
    n, size = 400, 8
    grey = np.arange(n) % 2 * 200 + 20  # cats flat grey 20, dogs flat grey 220: a pixel's value gives the weight
    batch = np.repeat(grey.astype(np.uint8)[:, None, None, None], size * size * 3).reshape(n, size, size, 3)
    labels = (np.arange(n) % 2).astype(np.float32)
    out, mixed = mixup(batch, labels, np.random.default_rng(3), share=0.5)
    np.testing.assert_array_equal(batch[:, 0, 0, 0], grey)  # the input is not changed
    assert out.dtype == np.uint8 and mixed.dtype == np.float32
    assert (out == out[:, :1, :1]).all()  # flat photos blend to flat photos: the same weight on every pixel
    np.testing.assert_allclose(mixed, (out[:, 0, 0, 0] - 20.0) / 200, atol=0.5 / 200 + 1e-6)  # label = dog share
    blended = (mixed > 0.01) & (mixed < 0.99)
    assert 60 <= blended.sum() <= 140  # half chosen, half of those with a dog-cat partner, less lam near 0 or 1
    assert ((mixed < 0.1) | (mixed > 0.9)).mean() > 0.5  # Beta(0.4, 0.4): most weights near 0 or 1


def test_mixup_in_the_feeder_blends_on_top_of_the_same_warps_and_is_off_by_default():
    x = blob_batch(32)
    y = np.arange(32) % 2
    plain_px, plain_y = Feeder(x, y, 32, shuffle_seed=3, augment=Augmentation())[0]
    mixed_px, mixed_y = Feeder(x, y, 32, shuffle_seed=3, augment=Augmentation(mixup=1.0))[0]
    np.testing.assert_array_equal(plain_y, y.astype(np.float32))
    soft = (mixed_y > 0) & (mixed_y < 1)
    assert soft.sum() >= 8 and not np.array_equal(plain_px, mixed_px)
    for k in np.flatnonzero(soft):  # labels differ: the label gives the weight, and some other photo matches
        lam = 1 - abs(float(mixed_y[k]) - float(plain_y[k]))
        blends = lam * plain_px[k] + (1 - lam) * plain_px[plain_y != plain_y[k]]  # each other-class partner
        assert np.abs(blends - mixed_px[k]).max(axis=(1, 2, 3)).min() <= 1.01 / 255  # uint8 rounding only


def test_alternating_flips_mirror_each_photo_every_other_epoch_where_random_flips_do_not():
    x, y = blob_batch(n=64, size=48), np.arange(64) % 2  # the disc left of centre: a mirror puts it right
    only_flips = {"rotation_deg": 0, "zoom": 0, "translation": 0, "contrast": 0}

    def mirrored_by_epoch(aug: Augmentation) -> np.ndarray:
        feeder, seen = Feeder(x, y, 64, shuffle_seed=5, augment=aug), []
        for _ in range(4):
            seen.append(np.array([centroid_x(p * 255) > 24 for p in feeder[0][0]]))  # one batch: all 64, in order
            feeder.on_epoch_end()
        return np.array(seen)

    alternate = mirrored_by_epoch(Augmentation(**only_flips, alternate_flip=True))
    assert 20 <= alternate[0].sum() <= 44  # about half, the first time
    assert (alternate[1] != alternate[0]).all() and (alternate[2] == alternate[0]).all()
    assert (alternate[3] == alternate[1]).all()
    random = mirrored_by_epoch(Augmentation(**only_flips))
    assert (random[1] == random[0]).any()  # random flips show some photos the same way twice in a row
    later = Feeder(x, y, 64, shuffle_seed=5, augment=Augmentation(**only_flips, alternate_flip=True), first_epoch=1)
    np.testing.assert_array_equal([centroid_x(p * 255) > 24 for p in later[0][0]], alternate[1])  # a stage continues

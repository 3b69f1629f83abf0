"""Behaviour tests of the spatial transform in m2df.video (issue 23): the full range of random crop offsets on wide and tall
clips, the flip draw, the centre crop with an odd margin, and the size after resizing the shorter side."""
import numpy as np
import pytest
import torch

from m2df.video import ClipTransform, resize_short_side


def position_clip(h, w, T=2):
    "uint8 (T, h, w, 3) whose channels hold row·w + col (mod 256), the row and the column of each pixel."
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
    f = np.stack([(r * w + c) % 256, r, c], -1).astype(np.uint8)
    return np.repeat(f[None], T, 0)


def offsets(x):
    "(top, left, flipped) of a crop of `position_clip` (values back in pixels)."
    v = (x * 255).round().long()
    top, a, b = int(v[0, 1, 0, 0]), int(v[0, 2, 0, 0]), int(v[0, 2, 0, -1])
    return top, min(a, b), a > b


@pytest.mark.parametrize('h, w', [(10, 17), (17, 10), (9, 9)])      # wide, tall, square
def test_random_crop_offsets_cover_the_full_range_and_match_the_draws(h, w):
    c = 6
    t = ClipTransform(train=True, resize=min(h, w), crop=c, flip=True, normalize=False)
    clip = position_clip(h, w)
    seen = []
    for seed in range(300):
        x = t(clip, np.random.default_rng(seed))
        assert x.shape == (2, 3, c, c)
        got = offsets(x)
        g = np.random.default_rng(seed)                    # the draws, in order: top, left, flip with probability 1/2
        want = (int(g.integers(0, h - c + 1)), int(g.integers(0, w - c + 1)), bool(g.random() < 0.5))
        assert got == want, (seed, got, want)
        assert torch.equal(x[0], x[1])                      # one crop and flip for every frame of the clip
        seen.append(got)
    tops, lefts, flips = zip(*seen)
    assert set(tops) == set(range(h - c + 1)) and set(lefts) == set(range(w - c + 1))   # both ends of both ranges
    assert 120 < sum(flips) < 180


def test_no_flip_when_the_benchmark_forbids_it():
    t = ClipTransform(train=True, resize=10, crop=6, flip=False, normalize=False)
    assert not any(offsets(t(position_clip(10, 17), np.random.default_rng(s)))[2] for s in range(50))


@pytest.mark.parametrize('h, w, top, left', [(10, 17, 2, 5), (17, 10, 5, 2), (11, 11, 2, 2), (10, 10, 2, 2)])
def test_centre_crop_rounds_an_odd_margin_down(h, w, top, left):
    t = ClipTransform(train=False, resize=min(h, w), crop=6, normalize=False)
    assert offsets(t(position_clip(h, w))) == (top, left, False)


@pytest.mark.parametrize('h, w, nh, nw', [(3, 5, 4, 7), (5, 3, 7, 4), (30, 50, 4, 7), (4, 9, 4, 9), (6, 10, 4, 7), (8, 11, 4, 6)])
def test_resize_short_side_rounds_the_other_side(h, w, nh, nw):
    # 5·4/3 = 6.67 -> 7; 50·4/30 = 6.67 -> 7; 10·4/6 = 6.67 -> 7; 11·4/8 = 5.5 -> 6 (round half to even)
    assert resize_short_side(torch.rand(1, 3, h, w), 4).shape == (1, 3, nh, nw)

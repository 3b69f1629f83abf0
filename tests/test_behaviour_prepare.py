"""Behaviour tests of m2df.prepare (issue 23): the resize rule (shorter side to 256, never enlarged, the other side rounded to
an even number), every prepared size in both modes from both source layouts, and where each split line is written."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2df.prepare import output_path, prepare_video, scaled_size
from m2df.splits import BENCHMARKS
from m2df.video import open_video, write_video


def naive_size(w, h, short):
    "Shorter side to `short` unless it is already shorter; the other side scaled and rounded to the nearest even number."
    if min(w, h) <= short: sw, sh = w, h
    elif w < h: sw, sh = short, h * short / w
    else: sw, sh = w * short / h, short
    near_even = lambda x: max(2, 2 * int(np.floor(x / 2 + 0.5)))
    return near_even(sw), near_even(sh)


@pytest.mark.parametrize('w, h, want', [
    (640, 480, (342, 256)),      # 640·256/480 = 341.3 -> 342 (nearest even)
    (480, 640, (256, 342)),      # tall: the width is the shorter side
    (1920, 1080, (456, 256)),    # 455.1 -> 456
    (1280, 720, (456, 256)),     # 455.1 -> 456
    (340, 256, (340, 256)),      # already 256: unchanged
    (320, 240, (320, 240)),      # smaller than 256: never enlarged
    (240, 320, (240, 320)),
    (641, 481, (342, 256)),      # 341.2 -> 342
    (700, 300, (598, 256)),      # 597.3 -> 598
    (300, 700, (256, 598)),
    (656, 300, (560, 256)),      # 559.8 -> 560
    (90, 62, (90, 62)),          # small: not enlarged to 256
    (250, 200, (250, 200)),
])
def test_scaled_size(w, h, want):
    assert scaled_size(w, h, 256) == want == naive_size(w, h, 256)


def test_scaled_size_other_short_sides():
    assert scaled_size(64, 48, 32) == (42, 32)               # 42.7 -> 42 (nearest even)
    assert scaled_size(48, 64, 32) == (32, 42)
    assert scaled_size(64, 48, 48) == (64, 48)


def source_video(path, w, h, n=5):
    frames = np.stack([np.full((h, w, 3), 40 * i, np.uint8) for i in range(n)])
    frames[:, :, : w // 2, 0] = 255                           # left half red: an unflipped, uncropped copy keeps it
    return write_video(path, frames)


def source_folder(path, w, h, n=5):
    path.mkdir(parents=True)
    for i in range(n):
        a = np.full((h, w, 3), 40 * i, np.uint8); a[:, : w // 2, 0] = 255
        Image.fromarray(a).save(path / f'img_{i + 1}.jpg', quality=95)
    return path


@pytest.mark.parametrize('layout', ['file', 'folder'])
@pytest.mark.parametrize('mode', ['frames', 'video'])
@pytest.mark.parametrize('w, h, short, want', [(64, 48, 32, (42, 32)), (48, 64, 32, (32, 42)), (40, 30, 256, (40, 30))])
def test_prepared_size_and_frames(tmp_path, layout, mode, w, h, short, want):
    src = source_video(tmp_path / 'src.mp4', w, h) if layout == 'file' else source_folder(tmp_path / 'src', w, h)
    dst = tmp_path / 'out' / ('v.mp4' if mode == 'video' else 'v')
    rec = prepare_video(src, dst, mode, short_side=short)
    assert (rec['frames'], rec['width'], rec['height']) == (5, *want)
    if mode == 'frames':
        assert sorted(p.name for p in dst.iterdir()) == [f'{i:05d}.jpg' for i in range(1, 6)]
        assert Image.open(dst / '00001.jpg').size == want
    else:
        assert dst.is_file()
    v = open_video(dst)
    a = v.read([0, 4])
    assert len(v) == 5 and a.shape == (2, want[1], want[0], 3)
    assert a[0, :, : want[0] // 4, 0].mean() > 200 and a[0, :, -want[0] // 4:, 0].mean() < 60   # red still on the left
    assert rec['bytes'] == (sum(f.stat().st_size for f in dst.iterdir()) if dst.is_dir() else dst.stat().st_size)
    assert not list(dst.parent.glob('.*part'))


def test_output_paths():
    ucf, kin = BENCHMARKS['ucf101'], BENCHMARKS['kinetics100']
    root = Path('/data')
    assert output_path(root, 'ApplyLipstick/v_1', 'frames', ucf) == root / 'ApplyLipstick' / 'v_1'
    assert output_path(root, 'ApplyLipstick/v_1', 'video', ucf) == root / 'ApplyLipstick' / 'v_1.mp4'
    assert output_path(root, 'ApplyLipstick/v_1.mp4', 'video', ucf) == root / 'ApplyLipstick' / 'v_1.mp4'
    assert output_path(root, 'ApplyLipstick/v_1.MP4', 'video', ucf) == root / 'ApplyLipstick' / 'v_1.MP4'
    assert output_path(root, 'ApplyLipstick/v_1.avi', 'video', ucf) == root / 'ApplyLipstick' / 'v_1.avi.mp4'
    assert output_path(root, 'air drumming/x', 'video', kin) == root / 'air_drumming' / 'x.mp4'   # one folder per class


@pytest.mark.parametrize('w,h,want', [((63), 61, (62, 60)), (61, 63, (60, 62)), (65, 255, (64, 254)), (257, 255, (256, 254)),
                                      (2, 3, (2, 2))])
def test_an_odd_side_is_never_enlarged_to_even(w, h, want):
    "Sides below the short side stay as they are, brought down (never up) to even: 63 -> 62, 61 -> 60."
    from m2df.prepare import scaled_size
    assert scaled_size(w, h, 256) == want

"Bad input and layout tests for m2df.video: every failure is a VideoError that names the file."
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2df.video import (VideoError, resolve_video, count_frames, read_frames, read_frames_pyav, sample_indices,
                        ClipTransform, load_clip, write_video, open_video, FrameFolder, VideoFile, CLIP_MEAN, CLIP_STD)

def grey_clip(n, h=32, w=64):
    "Frame i is a flat grey of level 10*i: tells which frames came back."
    return np.broadcast_to((np.arange(n) * 10 % 250)[:, None, None, None], (n, h, w, 3)).astype(np.uint8).copy()

@pytest.fixture
def root(tmp_path):
    "A data root with one video file, one frame folder and the bad cases."
    (tmp_path / 'good').mkdir()
    write_video(tmp_path / 'good' / 'v20.mp4', grey_clip(20))
    write_video(tmp_path / 'good' / 'short.mp4', grey_clip(5))
    (tmp_path / 'good' / 'frames').mkdir()
    for i, f in enumerate(grey_clip(11)): Image.fromarray(f).save(tmp_path / 'good' / 'frames' / f'{i:05d}.jpg', quality=95)
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'random.mp4').write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / 'bad' / 'empty.mp4').write_bytes(b'')
    (tmp_path / 'bad' / 'noimages').mkdir()
    (tmp_path / 'bad' / 'noimages' / 'notes.txt').write_text('no frames here')
    good = (tmp_path / 'good' / 'v20.mp4').read_bytes()
    (tmp_path / 'bad' / 'truncated.mp4').write_bytes(good[:len(good) // 2])
    return tmp_path

def raises_naming(fn, *names):
    with pytest.raises(VideoError) as e: fn()
    for n in names: assert str(n) in str(e.value), (n, str(e.value))
    return str(e.value)

# --- resolution

def test_resolve_file_and_folder(root):
    assert resolve_video(root, 'good/v20') == root / 'good' / 'v20.mp4'
    assert resolve_video(str(root), 'good/frames') == root / 'good' / 'frames'
    assert resolve_video(root, 'good/v20.mp4') == root / 'good' / 'v20.mp4'

def test_resolve_prefers_extension_order(root):
    write_video(root / 'good' / 'v20.avi', grey_clip(4))
    assert resolve_video(root, 'good/v20').suffix == '.mp4'
    (root / 'good' / 'v20.mp4').unlink()
    assert resolve_video(root, 'good/v20').suffix == '.avi'

def test_missing_video_names_path_and_tries(root):
    msg = raises_naming(lambda: resolve_video(root, 'good/nothere'), 'good/nothere', str(root))
    for ext in ('.mp4', '.avi', '.webm', '.mkv'): assert 'nothere' + ext in msg
    assert 'nothere' + os.sep in msg

@pytest.mark.parametrize('rel', ['../outside', 'good/../../outside', '/etc/passwd', '', '.', 'good/../..'])
def test_escaping_path(root, rel):
    (root.parent / 'outside.mp4').write_bytes(b'x')
    try: raises_naming(lambda: resolve_video(root, rel), repr(rel))
    finally: (root.parent / 'outside.mp4').unlink()

def test_inner_dotdot_that_stays_inside_is_fine(root):
    assert resolve_video(root, 'bad/../good/v20') == root / 'good' / 'v20.mp4'

def test_missing_root(tmp_path):
    raises_naming(lambda: resolve_video(tmp_path / 'nope', 'a/b'), 'nope')

# --- bad files: each raises VideoError naming the file, from every entry point

@pytest.mark.parametrize('name', ['random.mp4', 'empty.mp4', 'truncated.mp4'])
def test_unreadable_files(root, name):
    p = root / 'bad' / name
    for fn in (lambda: count_frames(p), lambda: read_frames(p, [0]), lambda: load_clip(p, 4, None, False)):
        raises_naming(fn, p)

def test_zero_byte_file_is_rejected_before_decoding(root):
    raises_naming(lambda: VideoFile(root / 'bad' / 'empty.mp4'), 'empty (0 bytes)')

def test_missing_file(root):
    p = root / 'good' / 'gone.mp4'
    raises_naming(lambda: count_frames(p), p)
    raises_naming(lambda: load_clip(p, 8, ClipTransform(False, 64, 56), False), p)

def test_frame_folder_without_images(root):
    p = root / 'bad' / 'noimages'
    raises_naming(lambda: count_frames(p), p, 'no')
    raises_naming(lambda: load_clip(p, 2, None, True, np.random.default_rng(0)), p)

def test_corrupt_frame_image(root):
    d = root / 'good' / 'frames'
    (d / '00003.jpg').write_bytes(b'not a jpeg')
    raises_naming(lambda: read_frames(d, [3]), '00003.jpg')
    assert read_frames(d, [2, 4]).shape == (2, 32, 64, 3)   # only the requested images are opened

def test_frames_of_different_sizes(root):
    d = root / 'good' / 'frames'
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(d / '00004.jpg')
    raises_naming(lambda: read_frames(d, [3, 4]), d, 'differ in size')

def test_video_shorter_than_T(root):
    p = root / 'good' / 'short.mp4'
    msg = raises_naming(lambda: load_clip(p, 8, ClipTransform(False, 64, 56), False), p, '5 frames', 'T=8')
    assert load_clip(p, 5, None, False).shape == (5, 3, 32, 64)
    raises_naming(lambda: load_clip(root / 'good' / 'frames', 12, None, True), 'frames', '11 frames')

def test_out_of_range_indices(root):
    p = root / 'good' / 'v20.mp4'
    raises_naming(lambda: read_frames(p, [0, 20]), p, '[20]')
    raises_naming(lambda: read_frames(p, [-1]), p, '[-1]')

# --- correct content

def test_read_frames_returns_requested_frames(root):
    p = root / 'good' / 'v20.mp4'
    assert count_frames(p) == 20
    idx = [19, 0, 7, 7, 12]
    got = read_frames(p, idx)
    assert got.dtype == np.uint8 and got.shape == (5, 32, 64, 3)
    np.testing.assert_allclose(got.reshape(5, -1).mean(1), np.array(idx) * 10, atol=3)

def test_pyav_fallback_agrees_with_decord(root):
    p = root / 'good' / 'v20.mp4'
    idx = np.array([3, 1, 17])
    a, b = read_frames(p, idx).astype(int), read_frames_pyav(p, idx).astype(int)
    assert np.abs(a - b).max() <= 2

def test_frame_size_that_decord_gets_wrong(tmp_path):
    # decord 0.6 returns 4-channel garbage for some sizes (dmlc/decord#336); the PyAV fallback reads them right
    p = write_video(tmp_path / 'odd.mp4', grey_clip(10, 32, 48))
    got = read_frames(p, [2, 9])
    assert got.shape == (2, 32, 48, 3)
    np.testing.assert_allclose(got.reshape(2, -1).mean(1), [20, 90], atol=3)

def test_frame_folder_natural_order(tmp_path):
    for i, f in enumerate(grey_clip(12)): Image.fromarray(f).save(tmp_path / f'frame_{i + 1}.png')
    Image.fromarray(grey_clip(1)[0]).save(tmp_path / '.hidden.png')
    (tmp_path / 'list.txt').write_text('x')
    assert count_frames(tmp_path) == 12
    np.testing.assert_array_equal(read_frames(tmp_path, [1, 9, 10])[:, 0, 0, 0], [10, 90, 100])

def test_load_clip_from_file_and_folder(root):
    tf = ClipTransform(False, resize=64, crop=56, normalize=False)
    for p, n in ((root / 'good' / 'v20.mp4', 20), (root / 'good' / 'frames', 11)):
        x = load_clip(p, 4, tf, False)
        assert x.shape == (4, 3, 56, 56) and x.dtype == torch.float32
        np.testing.assert_allclose(x.mean((1, 2, 3)).numpy() * 255, sample_indices(n, 4, False) * 10, atol=3)

def test_load_clip_training_is_seeded(root):
    p, tf = root / 'good' / 'v20.mp4', ClipTransform(True, resize=64, crop=56)
    a = load_clip(p, 8, tf, True, np.random.default_rng(5))
    b = load_clip(p, 8, tf, True, np.random.default_rng(5))
    assert torch.equal(a, b)
    means = {tuple(np.round(load_clip(p, 8, None, True, np.random.default_rng(s)).float().mean((1, 2, 3)).numpy()))
             for s in range(10)}
    assert len(means) > 1                                    # different seeds sample different frames

# --- sampling and transform

@pytest.mark.parametrize('n,T', [(8, 8), (9, 8), (15, 8), (16, 8), (17, 8), (300, 8), (33, 16), (5, 1)])
def test_sample_indices_segments(n, T):
    b = (np.arange(T + 1) * n) // T
    ev = sample_indices(n, T, False)
    assert len(ev) == T and ((ev >= b[:-1]) & (ev < b[1:])).all()
    np.testing.assert_array_equal(ev, sample_indices(n, T, False, np.random.default_rng(1)))   # rng ignored
    rng = np.random.default_rng(0)
    for _ in range(200):
        tr = sample_indices(n, T, True, rng)
        assert ((tr >= b[:-1]) & (tr < b[1:])).all() and (np.diff(tr) > 0).all()

@pytest.mark.parametrize('n,T,want', [(30, 3, [4, 14, 24]), (16, 8, [0, 2, 4, 6, 8, 10, 12, 14]), (10, 4, [0, 3, 5, 8]),
                                      (8, 8, list(range(8))), (101, 2, [24, 75])])
def test_sample_indices_evaluation_takes_segment_centres(n, T, want):
    np.testing.assert_array_equal(sample_indices(n, T, False), want)

def test_sample_indices_training_covers_segments():
    rng = np.random.default_rng(0)
    draws = np.stack([sample_indices(24, 8, True, rng) for _ in range(3000)])
    for i in range(8): assert set(draws[:, i]) == {3 * i, 3 * i + 1, 3 * i + 2}

def test_sample_indices_errors():
    with pytest.raises(ValueError, match='T=8'): sample_indices(7, 8, True)
    with pytest.raises(ValueError, match='T must be'): sample_indices(7, 0, False)

def test_transform_shapes_and_normalisation():
    frames = np.random.default_rng(0).integers(0, 256, (3, 240, 320, 3), dtype=np.uint8)
    for train in (False, True):
        x = ClipTransform(train, resize=256, crop=224)(frames, np.random.default_rng(0))
        assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    raw = ClipTransform(False, resize=240, crop=240, normalize=False)(frames[:, :, 40:280])
    np.testing.assert_allclose(raw.permute(0, 2, 3, 1).numpy(), frames[:, :, 40:280] / 255., atol=1e-6)  # identity
    normed = ClipTransform(False, resize=240, crop=240)(frames[:, :, 40:280])
    m, s = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normed * s + m, raw)

def test_transform_portrait_and_torch_input():
    frames = torch.zeros(2, 100, 50, 3, dtype=torch.uint8)
    assert ClipTransform(False, resize=64, crop=56)(frames).shape == (2, 3, 56, 56)

def test_transform_bad_input():
    with pytest.raises(ValueError, match='crop=64'): ClipTransform(True, resize=56, crop=64)
    with pytest.raises(ValueError, match=r'\(T, H, W, 3\)'): ClipTransform(False, 64, 56)(np.zeros((2, 3, 64, 64), np.uint8))

@pytest.mark.parametrize('dataset,preset,flip', [
    ('ssv2_small', 'paper', False), ('synthetic', 'paper', False),                      # left/right classes: never flipped
    ('ssv2_small', 'reference_fixed', False), ('ssv2_full', 'reference_fixed', False),  # flip=None: SSv2's rule, never
    ('ssv2_small', 'reference', True),                                                  # the authors flip every benchmark
    ('ucf101', 'reference_fixed', True), ('hmdb51', 'paper', True), ('kinetics100', 'paper', True),
    ('world', 'reference_fixed', False), ('synthetic', 'reference_fixed', False)])
def test_transform_of_a_config_follows_the_benchmarks_flip_rule(dataset, preset, flip):
    from m2df.config import make_config
    from m2df.episodes import clip_transform
    tf = clip_transform(make_config(dataset, preset), True)
    assert tf.flip is flip
    if (dataset, preset) == ('synthetic', 'paper'): assert (tf.resize, tf.crop, tf.normalize) == (64, 56, True)
    if preset == 'reference': assert tf.normalize is False
    assert clip_transform(make_config(dataset, preset, flip=True), True).flip is True

def test_transform_crop_and_flip_behaviour():
    ramp = np.broadcast_to(np.arange(100, dtype=np.uint8)[None, None, :, None] * 2, (3, 80, 100, 3)).copy()
    ev = ClipTransform(False, resize=80, crop=64, normalize=False)
    a, b = ev(ramp, np.random.default_rng(0)), ev(ramp, np.random.default_rng(1))
    assert torch.equal(a, b)                                                  # evaluation ignores the rng
    np.testing.assert_allclose(a[0, 0, 0].numpy() * 255, np.arange(18, 82) * 2, atol=1e-3)   # centre crop, unflipped
    rng, seen = np.random.default_rng(0), set()
    tr = ClipTransform(True, resize=80, crop=64, normalize=False)
    for _ in range(60):
        x = tr(ramp, rng)
        assert all(torch.equal(x[0], x[t]) for t in range(1, 3))            # one crop and flip for the whole clip
        row = x[0, 0, 0].numpy() * 255
        step = np.diff(row)
        assert (step == 2).all() or (step == -2).all()                        # a crop of the ramp, maybe mirrored
        seen.add((bool(step[0] < 0), int(round(min(row[0], row[-1]) / 2))))
    assert {f for f, _ in seen} == {True, False} and len({o for _, o in seen}) > 10
    nf = ClipTransform(True, resize=80, crop=64, flip=False, normalize=False)
    assert all((np.diff(nf(ramp, rng)[0, 0, 0].numpy()) > 0).all() for _ in range(30))


# --- inputs that used to be silently wrong or wrongly refused

@pytest.mark.parametrize('name', ['v.MP4', 'v.Avi', 'v.mKv'])
def test_extension_in_any_letter_case(tmp_path, name):
    (tmp_path / 'Cls').mkdir()
    write_video(tmp_path / 'Cls' / name, grey_clip(10))
    assert resolve_video(tmp_path, 'Cls/v') == tmp_path / 'Cls' / name
    assert resolve_video(tmp_path, 'Cls/v.mp4' if name.lower().endswith('mp4') else f'Cls/{name}') == tmp_path / 'Cls' / name
    assert load_clip(resolve_video(tmp_path, 'Cls/v'), 4, None, train=False).shape[0] == 4
    with pytest.raises(VideoError, match='any letter case'): resolve_video(tmp_path, 'Cls/w')


def truncated_avi(tmp_path, T=8):
    "An H.264 .avi of 120 frames (frame i is grey 2i) cut so that decord lists more frames than decode, at least T of them."
    import av, decord
    full = tmp_path / 'full.avi'
    write_video(full, np.broadcast_to((np.arange(120) * 2)[:, None, None, None], (120, 32, 64, 3)).astype(np.uint8).copy(),
                codec='libx264')
    data, cut = full.read_bytes(), tmp_path / 'cut.avi'
    for n in range(len(data) // 2, len(data), 97):
        cut.write_bytes(data[:n])
        try: listed = len(decord.VideoReader(str(cut), num_threads=1))
        except Exception: continue
        decoded = 0
        try:
            with av.open(str(cut)) as c:
                for _ in c.decode(video=0): decoded += 1
        except av.error.FFmpegError: pass
        if listed > decoded >= T: return cut, listed, decoded
    pytest.skip('no cut of this encoding lists more frames than decode')


def test_truncated_file_is_sampled_over_the_frames_that_exist(tmp_path):
    cut, listed, decoded = truncated_avi(tmp_path)
    with pytest.warns(UserWarning, match=f'lists {listed} frames but only {decoded} decode'):
        x = load_clip(cut, 8, None, train=False)
    levels = x[:, 0, 0, 0].float().numpy()
    want = sample_indices(decoded, 8, train=False) * 2          # the segment centres of the frames that exist
    assert np.abs(levels - want).max() <= 4, (levels, want)
    with pytest.warns(UserWarning):
        y = load_clip(cut, 8, None, train=True, rng=np.random.default_rng(0))
    assert y.shape[0] == 8 and y[:, 0, 0, 0].float().max() <= 2 * decoded + 4
    with pytest.raises(VideoError, match=f'fewer than the T={decoded + 1} frames'):
        load_clip(cut, decoded + 1, None, train=False)

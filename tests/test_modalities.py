"Tests of the modalities: Farnebäck flow (sign, magnitude, scaling), log-mel spectrograms, audio reading, box files."
import json, math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2df.karmma.modalities import (MODALITIES, FlowSpec, AudioSpec, ModalityError, farneback_flow, flow_pairs, clip_flow,
                             hz_to_mel, mel_to_hz, mel_centres, mel_filterbank, log_mel_spectrogram, read_audio, has_audio,
                             fit_length, read_box_annotations, clip_boxes)
from m2df.video import VideoError, write_video

def texture(seed=0, size=64, cells=16):
    "A smooth random grey texture (uint8 size×size), which Farnebäck can track."
    rng = np.random.default_rng(seed)
    return np.asarray(Image.fromarray(rng.uniform(0, 255, (cells, cells)).astype(np.uint8)).resize((size, size), Image.BICUBIC))

def test_modality_names():
    assert MODALITIES == ('rgb', 'flow', 'audio', 'boxes')

# --- optical flow

@pytest.mark.parametrize('k', [1, 2, 3, -2, -4])
def test_flow_of_translated_image(k):
    t = texture()
    f = farneback_flow(t, np.roll(t, k, axis=1))
    assert f.shape == (64, 64, 2) and f.dtype == np.float32
    assert abs(f[8:-8, 8:-8, 0].mean() - k) < 0.1
    assert abs(f[8:-8, 8:-8, 1].mean()) < 0.1
    g = farneback_flow(t, np.roll(t, k, axis=0))          # vertical: y grows downwards
    assert abs(g[8:-8, 8:-8, 1].mean() - k) < 0.1

@pytest.mark.parametrize('k', [1, 3, -2])
def test_flow_of_moving_shape(k):
    "A textured square moved right by k pixels over a static background: mean flow x on the square ≈ +k."
    bg = np.full((64, 64, 3), 60, np.uint8)
    obj = np.repeat(texture(1, 16, 4)[..., None], 3, -1)
    a, b = bg.copy(), bg.copy()
    a[24:40, 20:36] = obj
    b[24:40, 20 + k:36 + k] = obj
    f = farneback_flow(a, b)
    m = np.zeros((64, 64), bool); m[24:40, 20:36] = True
    assert abs(f[m, 0].mean() - k) < 0.15
    assert abs(f[m, 1].mean()) < 0.15
    assert np.abs(f[:8, :8]).max() < 0.05                 # far from the square nothing moves

def test_flow_of_still_frame_is_zero():
    t = texture()
    assert np.abs(farneback_flow(t, t)).mean() < 0.01

def test_clip_flow_scaling_and_clipping():
    t = np.repeat(texture()[..., None], 3, -1)
    spec = FlowSpec()
    assert spec.bound_px(256) == 20 and spec.bound_px(64) == 5
    x = clip_flow(np.stack([t, t]), np.stack([np.roll(t, 2, 1), np.roll(t, -1, 0)]))
    assert x.shape == (2, 2, 64, 64) and x.dtype == torch.float32
    assert abs(x[0, 0, 8:-8, 8:-8].mean().item() - 2 / 5) < 0.02
    assert abs(x[1, 1, 8:-8, 8:-8].mean().item() + 1 / 5) < 0.02
    y = clip_flow(t[None], np.roll(t, 3, 1)[None], bound=1.)           # 3 px over a 1 px bound: clipped
    assert y.max().item() <= 1 and y[0, 0, 8:-8, 8:-8].mean().item() > 0.95
    with pytest.raises(ValueError, match='bound'): clip_flow(t[None], t[None], bound=0.)
    with pytest.raises(ValueError, match='no frame pairs'): clip_flow(t[:0], t[:0])
    with pytest.raises(ValueError, match='one size'): farneback_flow(t, t[:32])

def test_flow_pairs():
    a, b = flow_pairs([0, 3, 7], 8)
    assert a.tolist() == [0, 3, 6] and b.tolist() == [1, 4, 7]
    with pytest.raises(ValueError, match='at least 2'): flow_pairs([0], 1)
    with pytest.raises(ValueError, match='out of range'): flow_pairs([-1], 5)

# --- log-mel

def test_mel_scale():
    assert abs(float(hz_to_mel(1000.)) - 1000.) < 0.5                  # HTK: 1000 Hz is 1000 mel
    f = np.array([0., 300., 4000.])
    assert np.allclose(mel_to_hz(hz_to_mel(f)), f)
    c = mel_centres()
    assert len(c) == 64 and np.all(np.diff(c) > 0) and 0 < c[0] < c[-1] < 8000

def test_filterbank_shape_and_peaks():
    spec = AudioSpec()
    W = mel_filterbank(spec)
    assert W.shape == (spec.n_mels, spec.n_fft // 2 + 1)
    assert (W.sum(1) > 0).all() and W.max() <= 1 + 1e-6
    freqs = np.linspace(0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
    peak_f = freqs[W.argmax(1).numpy()]
    bin_w = freqs[1]
    assert np.all(np.abs(peak_f - mel_centres(spec)) <= bin_w)           # each filter peaks at its centre
    with pytest.raises(ValueError, match='fmax'): mel_filterbank(AudioSpec(fmin=9000.))

@pytest.mark.parametrize('m', [5, 20, 33, 47, 60])
def test_log_mel_of_pure_tone_peaks_at_its_filter(m):
    spec = AudioSpec()
    f0 = float(mel_centres(spec)[m])
    t = np.arange(spec.sample_rate // 2) / spec.sample_rate
    S = log_mel_spectrogram(0.3 * np.sin(2 * np.pi * f0 * t), spec)
    assert S.shape == (1, 64, 1 + len(t) // spec.hop_length)
    assert int(S[0, :, 5:-5].mean(1).argmax()) == m

def test_log_mel_tone_between_filters_goes_to_the_nearer():
    spec = AudioSpec()
    c = mel_centres(spec)
    f0 = c[30] + 0.25 * (c[31] - c[30])
    t = np.arange(spec.sample_rate) / spec.sample_rate
    assert int(log_mel_spectrogram(np.sin(2 * np.pi * f0 * t), spec)[0].mean(1).argmax()) == 30

def test_log_mel_other_spec_and_errors():
    spec = AudioSpec(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=32)
    f0 = float(mel_centres(spec)[12])
    t = np.arange(8000) / 8000
    S = log_mel_spectrogram(torch.tensor(np.sin(2 * np.pi * f0 * t), dtype=torch.float32), spec)
    assert S.shape == (1, 32, 101) and int(S[0].mean(1).argmax()) == 12
    with pytest.raises(ValueError, match='mono'): log_mel_spectrogram(np.zeros((2, 100)))
    assert log_mel_spectrogram(np.zeros(10)).shape == (1, 64, 1)

# --- audio files

@pytest.fixture(scope='module')
def av_files(tmp_path_factory):
    d = tmp_path_factory.mktemp('av')
    frames = np.zeros((24, 32, 32, 3), np.uint8)
    sr = 44_100
    t = np.arange(2 * sr) / sr
    f0 = float(mel_centres()[40])
    tone = (0.4 * np.sin(2 * np.pi * f0 * t) * (t >= 1.0)).astype(np.float32)
    write_video(d / 'tone.mp4', frames, fps=12, audio=np.stack([tone, tone]), sample_rate=sr)
    write_video(d / 'silent.mp4', frames, fps=12)
    (d / 'random.mp4').write_bytes(np.random.default_rng(0).bytes(4000))
    (d / 'empty.mp4').write_bytes(b'')
    data = (d / 'tone.mp4').read_bytes()
    (d / 'truncated.mp4').write_bytes(data[:len(data) // 2])
    return d, f0

def test_read_audio_resamples_and_keeps_timing(av_files):
    d, f0 = av_files
    a = read_audio(d / 'tone.mp4')
    assert a.dtype == np.float32 and a.ndim == 1
    assert abs(len(a) / 16_000 - 2.0) < 0.01
    assert abs(np.argmax(np.abs(a) > 0.1) / 16_000 - 1.0) < 0.01           # onset at 1 s
    assert abs(np.abs(a[20_000:]).max() - 0.4) < 0.05                     # equal stereo channels averaged, not summed
    assert int(log_mel_spectrogram(a)[0, :, 120:].mean(1).argmax()) == 40
    b = read_audio(d / 'tone.mp4', sample_rate=8000)
    assert abs(len(b) / 8000 - 2.0) < 0.01

def test_read_audio_window(av_files):
    d, _ = av_files
    full = read_audio(d / 'tone.mp4')
    for s0 in (0.55, 0.7, 0.85, 0.95):                                   # windows across the onset at 1 s
        w = read_audio(d / 'tone.mp4', start=s0, end=s0 + 0.5)
        assert abs(len(w) - 8000) <= 16
        assert abs(np.argmax(np.abs(w) > 0.1) / 16_000 - (1 - s0)) < 0.002
        assert abs(np.abs(w[-2000:]).max() - 0.4) < 0.03
    w = read_audio(d / 'tone.mp4', start=1.25, end=1.75)                 # inside the tone: same spectrum as the full read
    off = int(1.25 * 16_000)
    S_w, S_f = log_mel_spectrogram(w)[0, :, 3:-3], log_mel_spectrogram(full[off:off + len(w)])[0, :, 3:-3]
    assert (S_w - S_f).abs().mean() < 0.2
    quiet = read_audio(d / 'tone.mp4', start=0.2, end=0.8)
    assert np.abs(quiet).max() < 0.02
    tail = read_audio(d / 'tone.mp4', start=1.9, end=5.0)                 # cut at the end of the stream
    assert abs(len(tail) / 16_000 - 0.1) < 0.01
    with pytest.raises(ValueError, match='end'): read_audio(d / 'tone.mp4', start=1., end=0.5)

def test_read_audio_window_starts_with_good_samples(tmp_path):
    "The first samples of a window are as in a full read (the frame decoded first after a seek is not used)."
    sr = 44_100
    t = np.arange(3 * sr) / sr
    x = (0.5 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5).astype(np.float32)
    write_video(tmp_path / 'low.mp4', np.zeros((36, 16, 16, 3), np.uint8), fps=12, audio=x, sample_rate=sr)
    full = read_audio(tmp_path / 'low.mp4')
    for s0 in (0.8, 1.33, 2.07):
        w = read_audio(tmp_path / 'low.mp4', start=s0, end=s0 + 0.3)
        o = int(round(s0 * 16_000))
        assert np.corrcoef(w[:400], full[o:o + 400])[0, 1] > 0.995, s0
        assert np.abs(w[:400] - full[o:o + 400]).max() < 0.05, s0

def test_no_audio_track_is_missing_not_an_error(av_files, tmp_path):
    d, _ = av_files
    assert read_audio(d / 'silent.mp4') is None
    assert not has_audio(d / 'silent.mp4') and has_audio(d / 'tone.mp4')
    (tmp_path / 'frames').mkdir()
    assert read_audio(tmp_path / 'frames') is None and not has_audio(tmp_path / 'frames')

@pytest.mark.parametrize('name', ['random.mp4', 'empty.mp4', 'truncated.mp4'])
def test_corrupt_file_is_an_error_naming_it(av_files, name):
    d, _ = av_files
    with pytest.raises(ModalityError, match=name):
        read_audio(d / name)

def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match='nothere.mp4'): read_audio(tmp_path / 'nothere.mp4')
    with pytest.raises(VideoError, match='nothere.mp4'): has_audio(tmp_path / 'nothere.mp4')

def test_fit_length():
    rng = np.random.default_rng(0)
    x = np.arange(100, dtype=np.float32)
    assert fit_length(x, 10).tolist() == list(range(45, 55))
    crops = {int(fit_length(x, 10, True, np.random.default_rng(s))[0]) for s in range(20)}
    assert len(crops) > 5 and all(0 <= c <= 90 for c in crops)
    y = fit_length(x[:3], 6)
    assert y.tolist() == [0, 1, 2, 0, 0, 0]

def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match='uint8'): write_video(tmp_path / 'x.mp4', np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match='audio'):
        write_video(tmp_path / 'x.mp4', np.zeros((2, 8, 8, 3), np.uint8), audio=np.zeros((3, 100)))

# --- boxes

def _ann():
    return {'7': [{'name': '7/0002.jpg', 'labels': [
        {'box2d': {'x1': 20, 'y1': 10, 'x2': 60, 'y2': 50}, 'standard_category': '0001', 'gt_annotation': 'object 1'},
        {'box2d': {'x1': 0, 'y1': 0, 'x2': 10, 'y2': 10}, 'standard_category': '0000', 'gt_annotation': 'object 0'},
        {'box2d': {'x1': 5, 'y1': 5, 'x2': 15, 'y2': 25}, 'standard_category': 'hand', 'gt_annotation': 'hand'}]}]}

def test_box_slots_and_normalisation(tmp_path):
    f = tmp_path / 'b.json'
    f.write_text(json.dumps(_ann()))
    ann = read_box_annotations(f)
    b = clip_boxes(ann['7'], [0, 1], width=100, height=50, max_objects=2)
    assert b.shape == (2, 2, 5)
    assert b[0].abs().sum() == 0                                          # frame 1 not annotated
    assert torch.allclose(b[1, 0], torch.tensor([0.05, 0.1, 0.15, 0.5, 1.]))   # hand first
    assert torch.allclose(b[1, 1], torch.tensor([0., 0., 0.1, 0.2, 1.]))        # then object 0 (object 1 dropped)
    assert clip_boxes([], [0], 10, 10) is None

def test_box_file_errors(tmp_path):
    (tmp_path / 'list.json').write_text('[]')
    with pytest.raises(ModalityError, match='list.json'): read_box_annotations(tmp_path / 'list.json')
    with pytest.raises(ModalityError, match='nothere.json'): read_box_annotations(tmp_path / 'nothere.json')
    bad = {'7': [{'name': '7/0001.jpg', 'labels': [{'standard_category': '0000'}]}]}
    with pytest.raises(ModalityError, match="video '7'"): clip_boxes(bad['7'], [0], 10, 10, video_id='7')
    with pytest.raises(ModalityError, match='frame number'):
        clip_boxes([{'name': 'x.jpg', 'labels': []}], [0], 10, 10)

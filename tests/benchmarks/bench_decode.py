"""Decoding speed on the synthetic benchmark's mp4 files: T sampled frames per video vs every frame.

Prints videos decoded per second when only the T frames of the evaluation sampler are decoded (decord `get_batch`
on those indices, the path `m2df.video.load_clip` takes), and when every frame of the same videos is decoded, and
their ratio, and the rate of the whole `load_clip` (decode + transform, torch with one thread as in a DataLoader
worker). Both decoding rates are measured in the same run, interleaved round by round so that a busy machine slows both alike;
the figures are medians over rounds. Opening the file is part of each measurement (a loader opens every video).

For reference it then does the same on longer clips (the real benchmarks' videos have a few hundred frames), made by
joining synthetic videos end to end, at 64x64 and upscaled to 320x240 (the frame size of UCF101 and HMDB51), encoded
with the encoder's default key-frame interval and with a key frame every 12 frames.

    python tests/benchmarks/bench_decode.py [--videos 640] [--rounds 5] [--frames 8] [--long-frames 240]
"""
import argparse, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m2df.synthetic import synthetic_root
from m2df.video import open_video, sample_indices, load_clip, ClipTransform, write_video

def decode(paths, T):
    "Open every video and decode T sampled frames (T=None: every frame); return the number of frames decoded."
    n = 0
    for p in paths:
        src = open_video(p)
        idx = np.arange(len(src)) if T is None else sample_indices(len(src), T, train=False)
        n += len(src.read(idx))
    return n

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--videos', type=int, default=640, help='number of videos (the default benchmark has 640)')
    ap.add_argument('--rounds', type=int, default=5, help='interleaved measurement rounds')
    ap.add_argument('--frames', type=int, default=8, help='T, frames sampled per video')
    ap.add_argument('--long-frames', type=int, default=240, help='length of the long clips (0: skip them)')
    ap.add_argument('--torch-threads', type=int, default=1,
                    help='torch intra-op threads for the transform (DataLoader workers use 1)')
    a = ap.parse_args()
    torch.set_num_threads(a.torch_threads)
    root = synthetic_root()
    paths = sorted((root / 'videos').rglob('*.mp4'))[:a.videos]
    lengths = [len(open_video(p)) for p in paths]
    print(f'{len(paths)} videos of {min(lengths)}-{max(lengths)} frames (mean {np.mean(lengths):.1f}), '
          f'{Path(paths[0]).stat().st_size / 1024:.1f} KiB each, from {root}')
    decode(paths[:20], a.frames); decode(paths[:20], None)                   # warm up caches
    tf = ClipTransform(train=False, resize=64, crop=56)
    rates = {'sampled': [], 'all': [], 'load_clip': []}
    for r in range(a.rounds):
        t = time.perf_counter(); decode(paths, a.frames); rates['sampled'].append(len(paths) / (time.perf_counter() - t))
        t = time.perf_counter(); decode(paths, None); rates['all'].append(len(paths) / (time.perf_counter() - t))
        t = time.perf_counter()
        for p in paths: load_clip(p, a.frames, tf, train=False)
        rates['load_clip'].append(len(paths) / (time.perf_counter() - t))
    report(rates, a.frames)
    if a.long_frames: long_clips(paths, a)

def measure(paths, T, rounds):
    "Interleaved rounds of videos/s for T sampled frames and for every frame."
    rates = {'sampled': [], 'all': []}
    decode(paths[:2], T); decode(paths[:2], None)
    for r in range(rounds):
        t = time.perf_counter(); decode(paths, T); rates['sampled'].append(len(paths) / (time.perf_counter() - t))
        t = time.perf_counter(); decode(paths, None); rates['all'].append(len(paths) / (time.perf_counter() - t))
    return rates

def long_clips(paths, a, n_clips=12):
    "The same comparison on clips of `a.long_frames` frames made by joining synthetic videos."
    with tempfile.TemporaryDirectory() as d:
        it = iter(paths)
        clips = []
        for _ in range(n_clips):
            parts, n = [], 0
            while n < a.long_frames:
                p = next(it); src = open_video(p); parts.append(src.read(np.arange(len(src)))); n += len(src)
            clips.append(np.concatenate(parts)[:a.long_frames])
        for h, w in ((64, 64), (240, 320)):
            if (h, w) != clips[0].shape[1:3]:   # upscaled to the frame size of UCF101 and HMDB51 videos
                clips = [F.interpolate(torch.from_numpy(c).permute(0, 3, 1, 2).float(), size=(h, w), mode='bilinear')
                         .round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy() for c in clips]
            for gop in (None, 12):
                files = [write_video(Path(d) / f'long{i}_{h}_{gop}.mp4', c, gop=gop) for i, c in enumerate(clips)]
                print(f'\n{n_clips} clips of {a.long_frames} frames of {w}x{h}, key frame '
                      + ('interval: encoder default (250)' if gop is None else f'every {gop} frames'))
                report(measure(files, a.frames, a.rounds), a.frames)

def report(rates, T):
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f'decode {T} sampled frames (get_batch): {med["sampled"]:8.1f} videos/s   (rounds: '
          + ', '.join(f'{v:.0f}' for v in rates['sampled']) + ')')
    print(f'decode every frame:                  {med["all"]:8.1f} videos/s   (rounds: '
          + ', '.join(f'{v:.0f}' for v in rates['all']) + ')')
    if 'load_clip' in med: print(f'load_clip (decode {T} + resize/crop/normalise): {med["load_clip"]:8.1f} videos/s')
    print(f'ratio sampled / every frame: {med["sampled"] / med["all"]:.2f}x  '
          f'(per-round ratios: ' + ', '.join(f'{s / e:.2f}' for s, e in zip(rates['sampled'], rates['all'])) + ')')

if __name__ == '__main__': main()

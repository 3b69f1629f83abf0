"""Clips per second per DataLoader worker on real-format data, raw and prepared, and the workers a GPU needs, in one run.

The work of one DataLoader worker per clip is `m2df.video.load_clip` with the training transform: open the video, decode
the T = 8 sampled frames, resize the short side to 256, random crop 224 + flip, CLIP normalisation (torch with one
thread, decord with one thread, as in a worker). It is timed here in one process, clip after clip, for each layout
below, rounds interleaved so that a loaded machine slows every layout alike; the figure is the median over rounds.

Real-format data is made from the synthetic benchmark's clips (moving shapes, 64x64): clips joined end to end to
`--seconds` seconds at 25 fps, upscaled, given a static texture and a little per-frame grain so that the encoder's
bitrate is that of real footage rather than of flat shapes (the bitrate of each layout is printed; for comparison
UCF101 holds 13,320 clips of 7.21 s on average in 6.5 GB, about 540 kbit/s at 320x240), then written in the layout the
README's Data section describes, `<data_root>/<class folder>/<video id>.mp4` or `<data_root>/<class folder>/<video id>/00001.jpg`:

  raw   h264-320x240    H.264 mp4, 320x240 (the frame size of UCF101 and HMDB51), encoder's key-frame interval (250)
  raw   mpeg4-320x240   MPEG-4 part 2 in AVI, 320x240 (the codec UCF101 and HMDB51 are distributed in)
  raw   h264-640x360    H.264 mp4, 640x360 (Kinetics-like)
  prep  h264-s256       the 640x360 clips re-encoded with the short side at 256 (456x256), as data preparation does
  prep  h264-s256-k12   the same with a key frame every 12 frames (shorter seeks, larger files)
  prep  jpg-s256        the 640x360 clips as frame folders of JPEGs (quality 90), short side 256
  prep  jpg-320x240     the 320x240 clips as frame folders of JPEGs (quality 90)

The per-worker rate is the CPU time of one process per clip (what one dedicated core delivers); the wall-clock rate is
printed beside it, inflated by whatever else the machine runs. From the per-worker rates it prints the workers needed
for given backbone rates (clips per second a GPU consumes in training; `gpu_check.py` measures it on a GPU):
workers = ceil(backbone rate / clips per second per worker). The default rates are references, not measurements of
this project: 49 and 103 clips/s are 391 and 826 images/s divided by 8 frames, the training throughput of timm's
`vit_base_patch16_224` and `resnet50` on an RTX 3090 with mixed precision (timm, huggingface/pytorch-image-models,
results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv); CLIP's ViT-B/16 and RN50 cost about the same per image
(CLIP's RN50 a little more: its stem has three convolutions and it ends in attention pooling); 400 clips/s stands
for a GPU several times faster.
Last, the real `m2df.episodes.episode_loader` (5-way 1-shot, 5 queries per class: 30 clips an episode) is run over
two layouts with 0, 1 and 2 workers, to show what the DataLoader delivers on this machine (2 cores, shared: more workers
than free cores cannot help here).

    python tests/benchmarks/bench_loader.py [--videos 10] [--seconds 7] [--rounds 3] [--backbone-rates 49,103,400]
                                            [--loader-episodes 4] [--keep DIR]
"""
import argparse, math, os, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from m2df.config import M2DFConfig, default_num_workers
from m2df.episodes import episode_loader
from m2df.synthetic import synthetic_root
from m2df.video import ClipTransform, load_clip, open_video, sample_indices, write_video

FPS, T, RESIZE, CROP = 25, 8, 256, 224
WAY, SHOT, QUERY = 5, 1, 5
LAYOUTS = ('raw h264-320x240', 'raw mpeg4-320x240', 'raw h264-640x360',
           'prep h264-s256', 'prep h264-s256-k12', 'prep jpg-s256', 'prep jpg-320x240')
EXT = {'raw h264-320x240': '.mp4', 'raw mpeg4-320x240': '.avi', 'raw h264-640x360': '.mp4', 'prep h264-s256': '.mp4',
       'prep h264-s256-k12': '.mp4', 'prep jpg-s256': '', 'prep jpg-320x240': ''}
UCF101_KBPS = 540                  # 6.5 GB / (13,320 clips x 7.21 s): UCF101's average bitrate


def long_source_clips(n_videos: int, n_frames: int, seed: int = 0):
    "`n_videos` uint8 (n_frames, 64, 64, 3) clips, each made of synthetic training videos joined end to end."
    paths = sorted((synthetic_root() / 'videos').rglob('*.mp4'))
    rng = np.random.default_rng(seed)
    order = iter(rng.permutation(len(paths)).tolist() * 4)
    out = []
    for _ in range(n_videos):
        parts, n = [], 0
        while n < n_frames:
            src = open_video(paths[next(order)]); parts.append(src.read(np.arange(len(src)))); n += len(src)
        out.append(np.concatenate(parts)[:n_frames])
    return out


def realistic(clip: np.ndarray, h: int, w: int, g: torch.Generator) -> np.ndarray:
    "`clip` upscaled to h x w, with a static texture and per-frame grain (so that the bitrate is that of real footage)."
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False)
    tex = F.interpolate(torch.randn(1, 3, h // 8, w // 8, generator=g) * 25, size=(h, w), mode='bicubic', align_corners=False)
    fine = torch.randn(1, 3, h, w, generator=g) * 10                     # static fine detail (edges, texture)
    grain = torch.randn(x.shape, generator=g) * 2.5                      # sensor noise, new every frame
    return (x + tex + fine + grain).round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


def write_avi(path: Path, frames: np.ndarray, fps: int, bit_rate: int) -> Path:
    "MPEG-4 part 2 (the codec of XviD) in an AVI container at `bit_rate` bit/s, as UCF101 and HMDB51 are distributed."
    import av
    with av.open(str(path), 'w') as c:
        s = c.add_stream('mpeg4', rate=fps)
        s.width, s.height, s.pix_fmt, s.bit_rate, s.thread_count = frames.shape[2], frames.shape[1], 'yuv420p', bit_rate, 1
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format='rgb24')): c.mux(pkt)
        for pkt in s.encode(): c.mux(pkt)
    return path


def short_side(clip: np.ndarray, size: int) -> np.ndarray:
    "Resize uint8 THWC frames so that the short side is `size` (even sides, antialiased)."
    h, w = clip.shape[1:3]
    nh, nw = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
    nh, nw = nh + nh % 2, nw + nw % 2
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(nh, nw), mode='bilinear', antialias=True, align_corners=False)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


def write_frames(folder: Path, clip: np.ndarray, quality: int = 90) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(clip): Image.fromarray(f).save(folder / f'{i + 1:05d}.jpg', quality=quality)
    return folder


def make_data(root: Path, n_videos: int, seconds: float) -> tuple:
    "Write `n_videos` distinct clips in every layout under root/clips/<layout>/, and a data root per layout, "
    "root/<layout>/<class>/<id>, of one 5-way episode's worth of videos (links to the distinct clips, reused in turn)."
    stamp = root / f'done-{n_videos}-{seconds:g}'
    clips = {l: [root / 'clips' / l.split()[1] / f'c{k:03d}{EXT[l]}' for k in range(n_videos)] for l in LAYOUTS}
    if not stamp.exists():
        t = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        for l in LAYOUTS: clips[l][0].parent.mkdir(parents=True, exist_ok=True)
        for k, src in enumerate(long_source_clips(n_videos, int(round(seconds * FPS)))):
            small, large = realistic(src, 240, 320, g), realistic(src, 360, 640, g)
            write_video(clips['raw h264-320x240'][k], small, fps=FPS)            # libx264, crf 18
            write_avi(clips['raw mpeg4-320x240'][k], small, FPS, UCF101_KBPS * 1000)
            write_video(clips['raw h264-640x360'][k], large, fps=FPS)
            s256 = short_side(large, RESIZE)
            write_video(clips['prep h264-s256'][k], s256, fps=FPS)
            write_video(clips['prep h264-s256-k12'][k], s256, fps=FPS, gop=12)
            write_frames(clips['prep jpg-s256'][k], s256)
            write_frames(clips['prep jpg-320x240'][k], small)
        stamp.write_text('ok')
        print(f'made {n_videos} clips of {seconds:g} s at {FPS} fps in {len(LAYOUTS)} layouts under {root} '
              f'in {time.perf_counter() - t:.0f} s')
    # the layout of the README's Data section: <data_root>/<class folder>/<video id>(.mp4|.avi|/00001.jpg)
    ids = [(f'class_{i % WAY}', f'v_{i // WAY:03d}') for i in range(WAY * (SHOT + QUERY))]
    (root / 'splits').mkdir(parents=True, exist_ok=True)
    (root / 'splits' / 'train.txt').write_text(''.join(f'{c}/{v}\n' for c, v in ids))
    roots = {}
    for l in LAYOUTS:
        roots[l] = root / 'data' / l.split()[1]
        for i, (c, v) in enumerate(ids):
            link = roots[l] / c / (v + EXT[l])
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True); link.symlink_to(clips[l][i % n_videos])
    return clips, roots, root / 'splits'


def size_of(p: Path) -> int: return sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size


def per_worker_rates(clips: dict, rounds: int) -> dict:
    "Median seconds per clip (CPU time of this process, and wall time) of decoding alone and of load_clip, per layout."
    tf = ClipTransform(train=True, resize=RESIZE, crop=CROP, flip=True, normalize=True)
    times = {l: {k: [] for k in ('decode_cpu', 'decode_wall', 'load_cpu', 'load_wall')} for l in clips}
    for l, paths in clips.items(): load_clip(paths[0], T, tf, True, np.random.default_rng(0))   # warm up
    def timed(fn, n):
        c, w = time.process_time(), time.perf_counter(); fn()
        return (time.process_time() - c) / n, (time.perf_counter() - w) / n
    for r in range(rounds):
        for l, paths in clips.items():
            rng = np.random.default_rng(r)
            def decode():
                for p in paths: src = open_video(p); src.read(sample_indices(len(src), T, True, rng))
            def load():
                for p in paths: load_clip(p, T, tf, True, rng)
            for k, fn in (('decode', decode), ('load', load)):
                c, w = timed(fn, len(paths)); times[l][f'{k}_cpu'].append(c); times[l][f'{k}_wall'].append(w)
    return {l: {k: statistics.median(v) for k, v in d.items()} | {'rounds': d['load_cpu']} for l, d in times.items()}


def loader_rate(data_root: Path, splits: Path, workers: int, n_episodes: int) -> float:
    "Clips/s delivered by `episode_loader` over `n_episodes` training episodes (workers started inside the timing)."
    cfg = M2DFConfig(dataset='synthetic', data_root=str(data_root), splits_dir=str(splits), frames=T, resize=RESIZE,
                     crop=CROP, way=WAY, shot=SHOT, query=QUERY, num_workers=workers, device='cpu')
    t = time.perf_counter()
    n = sum(ep['support'].shape[0] + ep['query'].shape[0] for ep in episode_loader(cfg, 'train', n_episodes))
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--videos', type=int, default=10, help='distinct clips per layout')
    ap.add_argument('--seconds', type=float, default=7., help='length of each clip (UCF101: 7.21 s on average)')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved timing rounds')
    ap.add_argument('--backbone-rates', default='49,103,400', help='clips/s a GPU consumes in training (list)')
    ap.add_argument('--loader-episodes', type=int, default=4, help='episodes per DataLoader measurement (0: skip)')
    ap.add_argument('--keep', default=None, help='folder to keep (and reuse) the generated data in')
    a = ap.parse_args()
    torch.set_num_threads(1)                          # what a DataLoader worker uses
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        clips, roots, splits = make_data(root, a.videos, a.seconds)
        print(f'{a.videos} distinct clips of {a.seconds:g} s at {FPS} fps ({int(round(a.seconds * FPS))} frames) per layout; '
              f'T={T} frames sampled (training jitter), short side {RESIZE}, random crop {CROP} + flip, CLIP normalisation; '
              f'torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; '
              f'medians of {a.rounds} interleaved rounds')
        rates = per_worker_rates(clips, a.rounds)
        print(f'\nper clip, CPU time of one process (what one dedicated core delivers; wall time is inflated by the '
              f'machine\'s other load):')
        print(f'{"layout":<20} {"frame":>8} {"kbit/s":>7} {"MB/clip":>8} {"decode ms":>10} {"transform ms":>13} '
              f'{"load_clip ms":>13} {"clips/s/worker":>15} {"(wall)":>7}   load_clip ms per round')
        rate = {l: 1 / rates[l]['load_cpu'] for l in clips}
        for l, paths in clips.items():
            src = open_video(paths[0]); h, w = src.read([0]).shape[1:3]
            mb = statistics.mean(size_of(p) for p in paths) / 1e6
            r = rates[l]
            size = f'{w}x{h}'
            print(f'{l:<20} {size:>8} {mb * 8e3 / a.seconds:7.0f} {mb:8.2f} {1e3 * r["decode_cpu"]:10.1f} '
                  f'{1e3 * (r["load_cpu"] - r["decode_cpu"]):13.1f} {1e3 * r["load_cpu"]:13.1f} {rate[l]:15.1f} '
                  f'{1 / r["load_wall"]:7.1f}   ' + ', '.join(f'{1e3 * v:.0f}' for v in r['rounds']))
        print(f'(transform = load_clip - decode: resize of the short side to {RESIZE}, crop, flip, normalisation; '
              f'UCF101 averages about {UCF101_KBPS} kbit/s)')
        raw = min((l for l in clips if l.startswith('raw')), key=lambda l: rate[l])
        best = max(clips, key=lambda l: rate[l])
        print(f'\nslowest raw layout {raw!r}: {rate[raw]:.1f} clips/s per worker; fastest layout {best!r}: '
              f'{rate[best]:.1f} clips/s per worker ({rate[best] / rate[raw]:.1f}x)')
        print(f'\nworkers needed = ceil(backbone clips/s / clips/s per worker)  (a clip is {T} frames: R frames/s = R/{T} clips/s)')
        print(f'{"backbone clips/s":>17}' + ''.join(f'{l.split()[1]:>20}' for l in clips))
        for R in (float(x) for x in a.backbone_rates.split(',')):
            cells = [f'{R:g}/{rate[l]:.1f} = {math.ceil(R / rate[l])}' for l in clips]
            print(f'{R:>17g}' + ''.join(f'{c:>20}' for c in cells))
        print(f'default num_workers here: {default_num_workers()} (m2df.config.default_num_workers: the CPUs this process '
              f'may use, {len(os.sched_getaffinity(0))}, less one, per training process, at most 16)')
        if a.loader_episodes:
            print(f'\nepisode_loader, {WAY}-way {SHOT}-shot {QUERY} queries ({WAY * (SHOT + QUERY)} clips per episode), '
                  f'{a.loader_episodes} episodes per measurement, worker start-up included:')
            for l in ('raw h264-320x240', 'prep jpg-s256'):
                row = {w: loader_rate(roots[l], splits, w, a.loader_episodes) for w in (0, 1, 2)}
                print(f'  {l:<20} ' + '   '.join(f'{w} workers {v:6.1f} clips/s' for w, v in row.items())
                      + f'   (2 workers / 0: {row[2] / row[0]:.2f}x)')


if __name__ == '__main__':
    main()

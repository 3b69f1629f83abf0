"""Data preparation: CPU time and disk per frame of the two preparations (JPEG frame folders, short-side-256 H.264), and
the CPU time to read an 8-frame evaluation clip before and after, and the data check's time per video, on procedurally generated clips at the sizes of the real
downloads (320x240 as UCF101/HMDB51, 1280x720 as many Kinetics videos).

There are no real videos on the development machine, so the clips are synthetic: coloured shapes moving over a panning
background of 1/f ("pink") noise, which has the spectrum of natural images and so compresses roughly like real
footage (flat synthetic shapes would compress several times better, white noise several times worse). The README's
disk and time figures for the real benchmarks are these per-frame measurements times the benchmarks' frame counts:
an extrapolation, stated as one. Run: `python tests/benchmarks/bench_prepare.py` (about a minute on one idle core; CPU times, so a loaded machine changes them less than wall times)."""
import sys, tempfile, time
from pathlib import Path

import numpy as np

from m2df.datacheck import probe_video
from m2df.prepare import prepare_video
from m2df.video import ClipTransform, load_clip, write_video


def pink_noise(h, w, rng):
    "A (h, w, 3) uint8 image with a 1/f amplitude spectrum."
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing='ij')
    f = np.sqrt(fx ** 2 + fy ** 2); f[0, 0] = 1
    out = []
    for _ in range(3):
        spec = (rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))) / f
        img = np.real(np.fft.ifft2(spec))
        out.append((img - img.mean()) / img.std())
    img = np.stack(out, -1) * 30 + 128
    return np.clip(img, 0, 255).astype(np.uint8)


def make_clip(path, w, h, n, seed=0):
    "n frames of shapes moving over a panning pink-noise background, H.264 (crf 23, as web video)."
    rng = np.random.default_rng(seed)
    bg = pink_noise(h + 64, w + 64 + n, rng)
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        f = bg[32:32 + h, t:t + w].copy()
        for k in range(3):
            cy, cx = int(h * (0.3 + 0.2 * k)), int((w * (0.2 + 0.3 * k) + 3 * t) % w)
            r = h // 10
            f[max(0, cy - r):cy + r, max(0, cx - r):cx + r] = (60 * k + 40, 200 - 50 * k, 90)
        frames[t] = np.clip(f + rng.normal(0, 2, f.shape), 0, 255).astype(np.uint8)   # sensor grain: no two frames alike
    write_video(path, frames, fps=25, codec='libx264', crf=23)


def clip_read_ms(path, reps=5):
    "Median CPU time (ms) of reading one 8-frame evaluation clip (decode, short side 256, centre crop 224)."
    tf = ClipTransform(train=False)
    ts = []
    for _ in range(reps):
        t = time.process_time(); load_clip(path, 8, tf, False); ts.append(time.process_time() - t)
    return 1e3 * float(np.median(ts))


def probe_ms(path, reps=5):
    "Median CPU time (ms) of the data check's look at one video (open, count the frames, decode the last one)."
    ts = []
    for _ in range(reps):
        t = time.process_time(); probe_video(str(path)); ts.append(time.process_time() - t)
    return 1e3 * float(np.median(ts))


def main():
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for (w, h, n) in ((320, 240, 100), (1280, 720, 40)):
            src = d / f'src-{w}x{h}.mp4'
            make_clip(src, w, h, n)
            r = dict(size=f'{w}x{h}', frames=n, source_kb_per_frame=src.stat().st_size / n / 1e3,
                     read_source_ms=clip_read_ms(src), probe_source_ms=probe_ms(src))
            for mode in ('frames', 'video'):
                dst = d / (f'{w}-frames' if mode == 'frames' else f'{w}-video.mp4')
                t = time.process_time(); info = prepare_video(src, dst, mode); s = time.process_time() - t
                r[f'{mode}_ms_per_frame'] = 1e3 * s / n
                r[f'{mode}_kb_per_frame'] = info['bytes'] / n / 1e3
                r[f'read_{mode}_ms'] = clip_read_ms(dst)
                r[f'probe_{mode}_ms'] = probe_ms(dst)
                r[f'{mode}_out'] = f"{info['width']}x{info['height']}"
            rows.append(r)
    for r in rows:
        print(f"{r['size']} source ({r['frames']} frames, {r['source_kb_per_frame']:.1f} kB/frame as H.264 crf 23):")
        for mode in ('frames', 'video'):
            print(f"  {mode:6s} -> {r[f'{mode}_out']}: {r[f'{mode}_ms_per_frame']:.1f} ms CPU per frame to prepare, "
                  f"{r[f'{mode}_kb_per_frame']:.1f} kB per frame on disk")
        print(f"  reading an 8-frame evaluation clip: source {r['read_source_ms']:.0f} ms, frame folder {r['read_frames_ms']:.0f} ms, "
              f"256 video {r['read_video_ms']:.0f} ms (ratio source/frames {r['read_source_ms'] / r['read_frames_ms']:.1f}x)")
        print(f"  data check per video: source {r['probe_source_ms']:.0f} ms, frame folder {r['probe_frames_ms']:.0f} ms, "
              f"256 video {r['probe_video_ms']:.0f} ms")
    return rows


if __name__ == '__main__': main()

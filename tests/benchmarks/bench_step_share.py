"""Share of a CLIP-M²DF training step spent outside the visual backbone, for the paper's two backbones, on the CPU.

One training episode: 5-way 1-shot with 5 queries per class, T = 8, 224 px, i.e. 30 clips = 240 frames. The step is
split in two parts, timed apart (forward + backward each), with random weights (pretrained=None) and the paper's head
(8 heads, 2048-wide feed-forward):

  backbone  CLIP's visual encoder on the 240 frames (`M2DF.encode`), backward from a fixed random gradient;
  head      everything after it, on the 5 + 25 clips' frame features (which require gradients, as in training): PPS,
            LTCE, GTCE, the two fusion encoders, OTAM, the multi-view fusion, the distillation and the loss
            (`M2DF.forward_features` + `m2df_loss`). The class-text embeddings are computed once before (frozen tower,
            cached in training too) and are not timed.

A full RN50 pass over 240 frames at 224 px takes minutes on a CPU, so the backbone is timed on a batch of `--frames`
frames and its time scaled linearly to 240 frames (the visual encoder is applied to every frame independently); the
output says so. Repetitions: 1 warm-up, then `--repeats` timed runs, the median reported. One torch thread by default
(a shared machine's other load makes OpenMP spin-waits distort the many small ops of the head; `--threads 0` keeps
torch's default).

    python tests/benchmarks/bench_step_share.py [--frames 8] [--repeats 2] [--head-repeats 5] [--threads 1]
"""
import argparse, statistics, time

import torch

from m2df.config import make_config
from m2df.model import M2DF, m2df_loss

WAY, SHOT, QUERY, T = 5, 1, 5, 8
NAMES = ['apply eye makeup', 'archery', 'baby crawling', 'balance beam', 'band marching']


def median_time(fn, repeats: int) -> float:
    "Median seconds of `fn()` over `repeats` runs after one warm-up run."
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(backbone: str, frames: int, repeats: int, head_repeats: int) -> dict:
    cfg = make_config('ucf101', backbone=backbone, frames=T, way=WAY, shot=SHOT, query=QUERY).replace(pretrained=None)
    torch.manual_seed(0)
    model = M2DF(cfg).train()
    D, S = model.dim, model.backbone.image_size
    clips = WAY * (SHOT + QUERY)
    total_frames = clips * T

    # backbone: forward + backward on `frames` frames (one batch of clips of T frames, or part of one clip)
    x = torch.randn(1, frames, 3, S, S) if frames < T else torch.randn(frames // T, T, 3, S, S)
    n = x.shape[0] * x.shape[1]
    g = torch.randn(x.shape[0], x.shape[1], D)
    def backbone_step():
        model.zero_grad(set_to_none=True)
        model.encode(x).float().backward(g)
    t_bb = median_time(backbone_step, repeats) * total_frames / n

    # head: everything after the backbone, forward + backward, on the episode's features
    fs = torch.randn(WAY * SHOT, T, D, requires_grad=True)
    fq = torch.randn(WAY * QUERY, T, D, requires_grad=True)
    ys, yq = torch.arange(WAY).repeat_interleave(SHOT), torch.arange(WAY).repeat_interleave(QUERY)
    text = model.class_text(NAMES)
    def head_step():
        model.zero_grad(set_to_none=True); fs.grad = fq.grad = None
        out = model.forward_features(fs, fq, ys, text)
        loss, _ = m2df_loss(out, yq, cfg)
        loss.backward()
    t_head = median_time(head_step, head_repeats)
    head_params = sum(p.numel() for k, p in model.named_parameters() if not k.startswith('backbone'))
    return dict(backbone=backbone, D=D, S=S, frames_timed=n, total_frames=total_frames, t_bb=t_bb, t_head=t_head,
                head_params=head_params)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--frames', type=int, default=8, help='frames in the timed backbone batch (scaled to 240)')
    ap.add_argument('--repeats', type=int, default=2, help='timed backbone runs after one warm-up')
    ap.add_argument('--head-repeats', type=int, default=5, help='timed head runs after one warm-up')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: torch default)')
    ap.add_argument('--backbones', default='RN50,ViT-B-16')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    print(f'one training episode: {WAY}-way {SHOT}-shot, {QUERY} queries per class, T={T}: {WAY * (SHOT + QUERY)} clips; '
          f'CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s); forward + backward')
    rows = []
    for name in a.backbones.split(','):
        r = measure(name, a.frames, a.repeats, a.head_repeats); rows.append(r)
        scaled = '' if r['frames_timed'] == r['total_frames'] else \
            f" (SCALED linearly from {r['frames_timed']} frames timed to {r['total_frames']})"
        print(f"\n{name}: D={r['D']}, {r['S']} px, head {r['head_params'] / 1e6:.1f} M parameters")
        print(f"  visual backbone  {r['t_bb']:9.3f} s per episode{scaled}")
        print(f"  head             {r['t_head']:9.3f} s per episode (PPS, LTCE, GTCE, 2 fusion encoders, OTAM, distillation, loss)")
        print(f"  head / backbone  {r['t_head'] / r['t_bb']:9.4f}")
        print(f"  share of the step outside the backbone: {100 * r['t_head'] / (r['t_head'] + r['t_bb']):.2f} %")


if __name__ == '__main__':
    main()

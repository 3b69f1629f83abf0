"""One check of a GPU, in one run under a time limit: training steps per second and peak memory of RN50 and ViT-B/16,
mixed precision on and off, and evaluation episodes per second from the feature cache.

Training: the real `m2df.learner.Learner.train_step` (autocast when `amp` is on, the loss, backward, Adam) on the paper's
model with random weights, T = 8 frames at 224 px, 5-way K-shot with 5 queries per class (1-shot: 30 clips = 240 frames
per episode; 5-shot: 50 clips = 400 frames), `--accumulation` episodes per optimiser step. The episodes are random
pixels already in (pinned) host memory, so that the figure is the GPU's, not the loader's: the clips per second it
prints are what the DataLoader must deliver (`bench_loader.py --backbone-rates` turns them into workers). Peak memory is
`torch.cuda.max_memory_allocated` over the timed steps (after a warm-up step, so the optimiser state is included).
The 5-shot ViT-B/16 rows are also run with activation checkpointing (`grad_checkpointing=True`), the option that makes
them fit a 24 GB GPU.

Evaluation: `m2df.evaluate.evaluate` on the synthetic benchmark's fixed test episodes (5-way 1-shot, 1 query per
class) with a `FeatureCache`: the first call encodes each distinct test video once (timed and reported), the second,
from the filled cache, runs only the head; its episodes per second are the figure.

Every case checks the time left first and is skipped, saying so, when the limit is near. With `--tiny` the same runs
on the CPU (or the device given) with the tiny test models and the synthetic benchmark's 56 px frames: a smoke test of
the script, not a measurement (on the CPU the learner ignores `amp`, so both rows run float32; peak memory is then the
process's resident high-water mark).

    python tests/benchmarks/gpu_check.py [--time-limit 480] [--shots 1,5] [--steps 5] [--eval-episodes 1000] [--out FILE]
    python tests/benchmarks/gpu_check.py --tiny --time-limit 300
"""
import argparse, json, os, platform, sys, tempfile, time

import torch

from m2df.config import make_config
from m2df.evaluate import FeatureCache, evaluate
from m2df.learner import Learner

GB = 1024 ** 3


class Deadline:
    def __init__(self, seconds): self.end = time.perf_counter() + seconds
    def left(self) -> float: return self.end - time.perf_counter()


def check_config(backbone, shot, amp, tiny, device, accumulation, **kw):
    "The paper's model (random weights) on the synthetic benchmark's splits, at 224 px (56 px with --tiny)."
    size = dict(resize=64, crop=56) if tiny else dict(resize=256, crop=224, fusion_ffn=2048, fusion_heads=8, logit_scale=1.,
                                                       lr=1e-5)
    return make_config('synthetic', backbone=backbone, shot=shot, query=5, amp=amp, device=device,
                       accumulation=accumulation, episodes=10 ** 6, **size, **kw).replace(pretrained=None)


def random_episodes(cfg, n, image_size, pin):
    "n training episodes of random pixels in host memory, shaped as the DataLoader yields them."
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ep = dict(support=torch.randn(cfg.way * cfg.shot, cfg.frames, 3, image_size, image_size, generator=g),
                  query=torch.randn(cfg.way * cfg.query, cfg.frames, 3, image_size, image_size, generator=g),
                  support_labels=torch.arange(cfg.way).repeat_interleave(cfg.shot),
                  query_labels=torch.arange(cfg.way).repeat_interleave(cfg.query),
                  class_ids=torch.arange(cfg.way), index=i)
        if pin: ep = {k: (v.pin_memory() if torch.is_tensor(v) and v.dim() == 5 else v) for k, v in ep.items()}
        out.append(ep)
    return out


def peak_reset(device):
    if device.type == 'cuda': torch.cuda.synchronize(device); torch.cuda.reset_peak_memory_stats(device)
    else:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')


def peak(device) -> float:
    if device.type == 'cuda': return torch.cuda.max_memory_allocated(device) / GB
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024 / GB


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def train_case(cfg, steps, deadline, run_dir):
    "Warm-up step, then up to `steps` timed optimiser steps of Learner.train_step: (steps/s, episodes/s, peak GB, steps)."
    lr = Learner(cfg, run_dir, resume=False, progress=False)
    dev = lr.device
    eps = random_episodes(cfg, lr.per_rank, lr.model.backbone.image_size, dev.type == 'cuda')
    t0 = time.perf_counter(); lr.train_step(eps); sync(dev); warm = time.perf_counter() - t0
    peak_reset(dev)
    n, t0 = 0, time.perf_counter()
    while n < steps and (n == 0 or deadline.left() > 2 * warm):
        lr.train_step(eps); n += 1
    sync(dev)
    dt = time.perf_counter() - t0
    out = (n / dt, n * lr.per_rank / dt, peak(dev), n)
    del lr
    if dev.type == 'cuda': torch.cuda.empty_cache()
    return out


def eval_case(cfg, n_episodes, device):
    "(seconds to encode the distinct test videos, episodes/s from the filled cache, accuracy) of `evaluate`."
    from m2df.model import M2DF
    torch.manual_seed(0)
    model = M2DF(cfg).to(device).eval()
    cache = FeatureCache()
    t0 = time.perf_counter(); first = evaluate(model, cfg, 'test', n_episodes, cache=cache, device=device); sync(device)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter(); again = evaluate(model, cfg, 'test', n_episodes, cache=cache, device=device); sync(device)
    t_again = time.perf_counter() - t0
    assert again['episode_accuracy'] == first['episode_accuracy'], 'the cache changed the scores'
    return t_first - t_again, n_episodes / t_again, again['accuracy']


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--time-limit', type=float, default=480., help='seconds for the whole run')
    ap.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    ap.add_argument('--backbones', default=None, help='default: RN50,ViT-B-16 (tiny: m2df-tiny-rn,m2df-tiny-vit)')
    ap.add_argument('--shots', default='1,5')
    ap.add_argument('--steps', type=int, default=None, help='timed optimiser steps per case after a warm-up step '
                    '(default 5; tiny: 1)')
    ap.add_argument('--accumulation', type=int, default=2, help='episodes per optimiser step')
    ap.add_argument('--eval-episodes', type=int, default=None, help='default 1000; tiny: 100')
    ap.add_argument('--train-share', type=float, default=0.7, help='share of the time limit for the training cases')
    ap.add_argument('--tiny', action='store_true', help='the tiny test models at 56 px: a smoke test (runs on a CPU)')
    ap.add_argument('--out', default=None, help='also write the figures to this JSON file')
    a = ap.parse_args()
    deadline = Deadline(a.time_limit)
    train_deadline = Deadline(a.time_limit * a.train_share)        # the rest is kept for evaluation
    a.steps = a.steps or (1 if a.tiny else 5)
    a.eval_episodes = a.eval_episodes or (100 if a.tiny else 1000)
    device = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type != 'cuda' and not a.tiny:
        sys.exit('no CUDA device: run on a machine with a GPU, or pass --tiny for the CPU smoke test')
    backbones = (a.backbones or ('m2df-tiny-rn,m2df-tiny-vit' if a.tiny else 'RN50,ViT-B-16')).split(',')
    shots = [int(s) for s in a.shots.split(',')]
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({platform.processor() or "?"}, '\
           f'{torch.get_num_threads()} torch threads)'
    print(f'{time.strftime("%Y-%m-%d %H:%M")}  device: {name}; torch {torch.__version__}'
          + (f', CUDA {torch.version.cuda}, {torch.cuda.get_device_properties(device).total_memory / GB:.0f} GB' if device.type == 'cuda' else '')
          + f'; time limit {a.time_limit:g} s' + ('; TINY MODE (smoke test, not a measurement)' if a.tiny else ''))
    px = 56 if a.tiny else 224
    print(f'\ntraining: Learner.train_step, 5-way K-shot 5 queries, T=8, {px} px, {a.accumulation} episodes per optimiser '
          f'step, random weights, episodes in host memory')
    print(f'{"backbone":<14} {"shot":>4} {"amp":>5} {"ckpt":>5} {"steps/s":>8} {"episodes/s":>10} {"clips/s":>8} '
          f'{"peak GB":>8} {"timed steps":>11}')
    rows = []
    cases = [(bb, shot, amp, False) for bb in backbones for shot in shots for amp in (True, False)]
    cases += [(bb, 5, amp, True) for bb in backbones if 'vit' in bb.lower() and 5 in shots for amp in (True, False)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (bb, shot, amp, ckpt) in enumerate(cases):
            head = f'{bb:<14} {shot:>4} {"on" if amp else "off":>5} {"on" if ckpt else "off":>5}'
            if train_deadline.left() < 10: print(f'{head} skipped (time limit)'); continue
            cfg = check_config(bb, shot, amp, a.tiny, str(device), a.accumulation, grad_checkpointing=ckpt)
            try:
                sps, eps, pk, n = train_case(cfg, a.steps, train_deadline, f'{tmp}/run{i}')
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache(); print(f'{head} out of memory'); rows.append(dict(backbone=bb, shot=shot, amp=amp,
                                                                                            ckpt=ckpt, oom=True)); continue
            clips = eps * 5 * (shot + 5)
            fits = ('' if device.type != 'cuda' else '  fits 24 GB' if pk < 24 else '  over 24 GB')
            print(f'{head} {sps:8.2f} {eps:10.2f} {clips:8.1f} {pk:8.2f} {n:11d}{fits}', flush=True)
            rows.append(dict(backbone=bb, shot=shot, amp=amp, ckpt=ckpt, steps_per_s=sps, episodes_per_s=eps,
                             clips_per_s=clips, peak_gb=pk))
        print(f'\nevaluation: 5-way 1-shot, 1 query per class, fixed test episodes of the synthetic benchmark at {px} px; '
              f'the first call fills the cache, the second runs the head only')
        print(f'{"backbone":<14} {"amp":>5} {"encode s":>9} {"episodes/s from cache":>22}')
        for bb in backbones:
            for amp in (True, False):
                if deadline.left() < 10: print(f'{bb:<14} {"on" if amp else "off":>5} skipped (time limit)'); continue
                cfg = check_config(bb, 1, amp, a.tiny, str(device), 1)
                enc, eps, acc = eval_case(cfg, a.eval_episodes, device)
                print(f'{bb:<14} {"on" if amp else "off":>5} {enc:9.1f} {eps:22.1f}', flush=True)
                rows.append(dict(backbone=bb, amp=amp, eval_encode_s=enc, eval_episodes_per_s=eps))
    print(f'\ntotal {a.time_limit - deadline.left():.0f} s')
    if a.out:
        with open(a.out, 'w') as f: json.dump(dict(device=name, date=time.strftime('%Y-%m-%d'), tiny=a.tiny, rows=rows), f, indent=1)


if __name__ == '__main__':
    main()

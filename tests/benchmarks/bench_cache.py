"""What the feature cache and the batched head save on the synthetic benchmark, in one run.

Evaluation: the time to score the same fixed test episodes (5-way 1-shot, 1 query per class: 10 videos per episode) with
the feature cache (each distinct video decoded and encoded once, then only the model's head), the head run over chunks
of `eval_chunk` episodes at once (the default) and one episode at a time (`chunk=1`), and without the cache (every
episode decoded and encoded); the ratios per episode, and the ideal ratio episodes x videos per episode / distinct
videos (reached when decoding + encoding is all that costs). The cached time is split into encoding the distinct videos
and the head over the episodes, which is why the measured ratio stays below the ideal one; the head's time per episode
is also measured alone (warm cache) for several chunk sizes. Every way of scoring must give the same accuracy episode by
episode (checked). If `--uncached` is below `--episodes`, the uncached time of `--episodes` episodes is extrapolated
linearly from the measured ones (decoding is the same work for every episode) and labelled so; the ratio on the episodes
measured both ways is printed as well.

Training: episodes per second with the backbone fine-tuned (every episode decoded with augmentation, backbone forward and
backward) and with a frozen backbone and cached features (`freeze_backbone=True, train_augment=False`: the training split is
encoded once, the first time, then each episode is a lookup and the head's forward and backward).

The model is the synthetic preset's tiny random open_clip ViT (T = 8, 56 px), on the CPU, with one torch thread by
default: on a shared machine OpenMP's spin-waiting makes two threads up to 10x slower on such small tensors.

    python tests/benchmarks/bench_cache.py [--episodes 1000] [--uncached 1000] [--chunks 1,16,64,256] [--train-episodes 16]
                                           [--frozen-episodes 64] [--threads 1]
"""
import argparse, tempfile, time

import torch

from m2df.config import make_config
from m2df.episodes import benchmark_split
from m2df.evaluate import FeatureCache, episodes_of, evaluate
from m2df.learner import Learner
from m2df.model import M2DF


def timed(fn):
    t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t


def train_rate(cfg, run_dir, n_episodes: int) -> tuple:
    "(seconds of the first call, episodes per second over `n_episodes` after it) of `Learner.train_step` on `cfg`."
    lr = Learner(cfg, run_dir, progress=False)
    per = lr.per_rank
    it = lr.batches(0)
    def step(): return lr.train_step([next(it) for _ in range(per)])
    _, first = timed(step)                            # warm-up (and, frozen, encoding the training split)
    steps = max(1, n_episodes // per)
    _, t = timed(lambda: [step() for _ in range(steps)])
    return first, steps * per / t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--episodes', type=int, default=1000, help='fixed test episodes scored with the cache')
    ap.add_argument('--uncached', type=int, default=1000, help='of those, how many are also scored without the cache')
    ap.add_argument('--chunks', default='1,16,64,256', help='chunk sizes whose head time per episode is measured alone')
    ap.add_argument('--train-episodes', type=int, default=16, help='training episodes timed with the backbone fine-tuned')
    ap.add_argument('--frozen-episodes', type=int, default=64, help='training episodes timed frozen with cached features')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: torch default)')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    cfg = make_config('synthetic')
    print(f'synthetic benchmark, backbone {cfg.backbone} (random init), T={cfg.frames}, crop {cfg.crop}, '
          f'{cfg.way}-way {cfg.shot}-shot, {cfg.eval_query} query per class; torch threads {torch.get_num_threads()}')
    torch.manual_seed(0)
    model = M2DF(cfg).eval()
    split, specs = episodes_of(cfg, 'test', a.episodes)
    slots = sum(len(s.support) + len(s.query) for s in specs)
    distinct = len({r.path for s in specs for r in s.support + s.query})

    # --- warm-up, not timed: the class texts of the split (encoded once per model: the text tower never trains) and one
    #     episode decoded, encoded and scored (first calls of every operation)
    _, t_warm = timed(lambda: evaluate(model, cfg, 'test', 1, cache=False))

    # --- evaluation with the cache (cold: one call encodes the distinct videos once, then runs the head), batched over
    #     chunks of episodes (the default) and one episode at a time
    cached, t_cached = timed(lambda: evaluate(model, cfg, 'test', a.episodes, cache=FeatureCache()))
    cached1, t_cached1 = timed(lambda: evaluate(model, cfg, 'test', a.episodes, cache=FeatureCache(), chunk=1))
    assert cached1['episode_accuracy'] == cached['episode_accuracy'], 'the batched head changed the scores'
    warm = FeatureCache()
    _, t_encode = timed(lambda: warm.get(model, cfg, 'test', [r for s in specs for r in s.support + s.query]))
    chunks = [int(c) for c in a.chunks.split(',')]
    head_ms = {c: 1000 * timed(lambda: evaluate(model, cfg, 'test', a.episodes, cache=warm, chunk=c))[1] / a.episodes for c in chunks}

    # --- evaluation without the cache
    n = min(a.uncached, a.episodes)
    uncached, t_unc_n = timed(lambda: evaluate(model, cfg, 'test', n, cache=False))
    assert uncached['episode_accuracy'] == cached['episode_accuracy'][:n], 'the cache changed the scores'
    sub = specs[:n]
    distinct_n = len({r.path for s in sub for r in s.support + s.query})
    _, t_cached_n = timed(lambda: evaluate(model, cfg, 'test', n, cache=FeatureCache()))
    t_unc = t_unc_n * a.episodes / n

    print(f'\nevaluation of {a.episodes} fixed test episodes ({slots} video slots, {distinct} distinct videos), after a warm-up '
          f'({t_warm:.1f} s: the {len(split.classes)} class texts and one episode scored without the cache):')
    print(f'  with the cache, batched      {t_cached:8.1f} s  (one call from a cold cache, the head on {cfg.eval_chunk} episodes '
          f'at once; of which encoding the {distinct} videos takes about {t_encode:.1f} s, timed apart, and the head the rest)')
    print(f'  with the cache, one at a time{t_cached1:8.1f} s  (the same with chunk=1)')
    label = 'measured' if n == a.episodes else f'EXTRAPOLATED from {n} measured episodes ({t_unc_n:.1f} s) x {a.episodes}/{n}'
    print(f'  without the cache            {t_unc:8.1f} s  ({label})')
    print(f'  ratio without/with, batched  {t_unc / t_cached:8.1f} x   per episode: {1000 * t_unc / a.episodes:.1f} ms vs '
          f'{1000 * t_cached / a.episodes:.2f} ms')
    print(f'  ratio without/with, one at a time {t_unc / t_cached1:8.1f} x')
    print(f'  ideal ratio                  {slots / distinct:8.1f} x   (episodes x videos per episode / distinct videos = {slots}/{distinct})')
    print(f'  the head alone (warm cache), ms per episode: ' + ', '.join(f'{head_ms[c]:.2f} (chunk {c})' for c in chunks)
          + (f'; {head_ms[chunks[0]] / head_ms[chunks[-1]]:.1f} x faster at chunk {chunks[-1]} than at chunk {chunks[0]}' if len(chunks) > 1 else ''))
    head = t_cached - t_encode
    print(f'  decoding + encoding alone: {t_unc - head:.1f} s without vs {t_encode:.1f} s with = {(t_unc - head) / t_encode:.1f} x '
          f'(derived: the batched head, {head:.1f} s = {1000 * head / a.episodes:.2f} ms per episode, runs either way)')
    if n != a.episodes:
        print(f'  on the {n} episodes measured both ways: {t_unc_n:.1f} s vs {t_cached_n:.1f} s = {t_unc_n / t_cached_n:.1f} x '
              f'(ideal {sum(len(s.support) + len(s.query) for s in sub) / distinct_n:.1f} x)')
    print(f'  accuracy {cached["accuracy"]:.2f} ± {cached["ci95"]:.2f} every way, episode by episode (untrained model)')

    # --- training
    with tempfile.TemporaryDirectory() as d:
        first_ft, rate_ft = train_rate(cfg, f'{d}/ft', a.train_episodes)
        frozen = cfg.replace(freeze_backbone=True, train_augment=False)
        first_fr, rate_fr = train_rate(frozen, f'{d}/frozen', a.frozen_episodes)
    n_train = len(benchmark_split(cfg, 'train').videos)
    print(f'\ntraining ({cfg.way}-way {cfg.shot}-shot, {cfg.query} queries per class, {cfg.accumulation} episodes per step):')
    print(f'  backbone fine-tuned, decoding every episode:   {rate_ft:7.2f} episodes/s  (over {max(1, a.train_episodes // cfg.accumulation) * cfg.accumulation} episodes after a warm-up step)')
    print(f'  frozen backbone, cached features:              {rate_fr:7.2f} episodes/s  (over {max(1, a.frozen_episodes // cfg.accumulation) * cfg.accumulation} episodes; '
          f'the first step, which encodes the {n_train} training videos once, took {first_fr:.1f} s)')
    print(f'  ratio frozen+cache / fine-tuned:               {rate_fr / rate_ft:7.1f} x')


if __name__ == '__main__':
    main()

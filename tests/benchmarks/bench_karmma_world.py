"""KARMMA in the miniature world, over seeds: what does distillation add to robustness against missing modalities?

The benchmark is `m2df.karmma.world`'s: 24 classes = colour (RGB only) x motion (RGB and flow) x sound (audio only),
so that RGB alone can reach at most 50 %, flow 16.7 %, audio 8.3 %. For each seed: the teacher's tiny extractors are
pretrained alone on the separate pretraining pool (each on the attributes its modality shows) and frozen; the teacher
(CE + InfoNCE) trains its fusion block and MLP; then the student (modality dropout, CE + KD from the teacher), the
`dropout_only` baseline (the student's network and modality dropout, no teacher: the ablation of distillation) and
the `ce_only` baseline. The three models of the student's network start from the same extractors, pretrained on the
pool like the teacher's (`pretrain_world_extractors`; the paper's student fine-tunes a Kinetics-400 Swin-T for RGB and
flow and starts its audio transformer from scratch): `--student-pretrained` names which (default all three; `rgb flow`
is the paper's start, nothing after it: from scratch). A record says which extractors its model started pretrained,
and records of another start are refused rather than mixed. Every model trains until its validation accuracy has not
improved for `patience` epochs (scale `tiny_converge`: at most 120 epochs, patience 30), and its record says where and
why it stopped.

All four are scored on the test split under both protocols: every modality subset on the clips that hold all three
modalities (`all`: the three; `missing`: the mean over the six subsets lacking one or two), and each modality dropped
with probability p = 0, 0.1, ..., 0.9 (at least one kept; the same drops for every model): `p<p>` is one draw of the
drops per test clip, as the paper's protocol; `e<p>` is the same accuracy as its exact expectation over the draws, on
the clips that hold all three modalities (`expected_drop_accuracy` of the subset accuracies), without the draws' noise.

Resumable: one record per seed and model, <out>/seed<s>/<role>.json, reused when present (and the extractors of a
seed, <out>/seed<s>/teacher_extractors.pt with its .json record). The summary covers the seeds given:
mean ± 95% t-interval over seeds, the paired differences student - dropout_only and student - ce_only with their
t-intervals, and, from the observed spread, the number of seeds a ±3-point interval would need.

    python tests/benchmarks/bench_karmma_world.py --seeds 0 1 2 3 4 [--out runs/karmma-world-study] [--figure figures/karmma_seeds_world] [--pilot 10]

`--pilot K` treats the first K seeds given as the pilot of Stein's two-stage rule: from their spread it prints, for each
difference, estimator and p, how many seeds a ±3-point interval needs in all (max(K, ⌈(t(0.975, K-1)·s_K/3)²⌉)), and the
two-stage interval over all the seeds given (mean ± t(0.975, K-1)·s_K/√n: exact 95% coverage under normality, at most ±3
once n reaches the rule's count); with `--figure` the .md gets a second table of those intervals.

`--figure F` also writes F.png (the drop curves of the four models and the two paired differences, mean ± 95%
t-interval over the seeds, by both estimators) and F.md (the differences' table), from the seeds given.
"""
import argparse, json, math, time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from m2df.karmma.data import KarmmaDataset
from m2df.karmma.model import make_karmma_config
from m2df.karmma.train import CachedClips, KarmmaTrainer, evaluate_protocols, expected_drop_accuracy, modality_subsets
from m2df.karmma.world import (STUDENT_PRETRAINED, karmma_pool_root, karmma_world_root, load_karmma_pool, load_karmma_world,
                               modality_bound, pretrain_world_extractors)
from m2df.runs import atomic_write_text

ROLES = ('teacher', 'student', 'dropout_only', 'ce_only')
PAIRS = (('student', 'dropout_only'), ('student', 'ce_only'))
DROPS = tuple(round(0.1 * i, 1) for i in range(10))
METRICS = ('all', 'missing') + tuple(f'p{p}' for p in DROPS) + tuple(f'e{p}' for p in DROPS)
GROUPS = {'the subset protocol (clips holding all three modalities)': METRICS[:2],
          'the drop protocol, one draw per clip (all test clips)': METRICS[2:12],
          'the drop protocol, exact expectation over the draws (clips holding all three modalities)': METRICS[12:]}
HALF_WIDTH = 3.                                   # points: the interval the seed count is planned for


def t_interval(x):
    "Mean and 95% t-interval half-width of a sample (nan half-width for one value)."
    x = np.asarray(x, float)
    if len(x) < 2: return float(x.mean()), float('nan')
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def seeds_needed(sd, half=HALF_WIDTH, most=10_000):
    "Smallest n >= 2 whose 95% t-interval of a mean of n values with standard deviation `sd` is at most ±half (None if sd is unknown)."
    if sd is None or not np.isfinite(sd): return None
    for n in range(2, most + 1):
        if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= half: return n
    return most


def stein_seeds(pilot, half=HALF_WIDTH):
    "Seeds in all that Stein's two-stage rule asks for after the `pilot` values: max(n0, ⌈(t(0.975, n0-1)·s0/half)²⌉)."
    pilot = np.asarray(pilot, float); n0 = len(pilot)
    if n0 < 2: raise ValueError(f'a pilot needs 2 or more values, got {n0}')
    return max(n0, math.ceil((stats.t.ppf(0.975, n0 - 1) * pilot.std(ddof=1) / half) ** 2))


def stein_interval(x, n0):
    """Stein's two-stage 95% interval: the mean of all of `x` ± t(0.975, n0-1)·s0/√n, s0 from its first `n0` values (the pilot).
    Exact coverage under normality for any n fixed from the pilot alone; at n >= stein_seeds(x[:n0], half), at most ±half."""
    x = np.asarray(x, float)
    if not 2 <= n0 <= len(x): raise ValueError(f'the pilot must hold 2 to {len(x)} values, got {n0}')
    return float(x.mean()), float(stats.t.ppf(0.975, n0 - 1) * x[:n0].std(ddof=1) / math.sqrt(len(x)))


def data(cfg, videos_per_class, pool_clips):
    "The benchmark's train/val/test and the pool's train/held_out datasets, each clip decoded once."
    kw = dict(modalities=cfg.modalities, frames=cfg.frames, size=cfg.size, rgb_norm=cfg.rgb_statistics)
    root, pool = karmma_world_root(videos_per_class=videos_per_class), karmma_pool_root(clips=pool_clips)
    ds = {s: CachedClips(KarmmaDataset(load_karmma_world(root, s), **kw)) for s in ('train', 'val', 'test')}
    ds.update({f'pool_{p}': CachedClips(KarmmaDataset(load_karmma_pool(pool, p), **kw)) for p in ('train', 'held_out')})
    return ds


def figures(res, role, mods):
    "The record's accuracies of `role` from `evaluate_protocols`' result."
    r = res['models'][role]
    acc = {k: v['accuracy'] for k, v in r['subsets'].items()}
    fewer = ['+'.join(s) for s in modality_subsets(mods) if len(s) < len(mods)]
    fig = {'all': acc['+'.join(mods)], 'missing': float(np.mean([acc[k] for k in fewer])), 'subsets': acc}
    fig.update({f'p{p}': r['drop'][p]['accuracy'] for p in DROPS})
    return with_expected(fig, mods)


def with_expected(rec, mods):
    "`rec` with the drop protocol's exact expectations e<p> from its subset accuracies (records written before they existed included)."
    return {**rec, **{f'e{p}': expected_drop_accuracy(rec['subsets'], p, mods) for p in DROPS}}


def started_pretrained(cfg):
    "The modalities whose extractor the model of `cfg` starts pretrained on the pool (a record's `pretrained`)."
    if not cfg.extractor_checkpoint: return []
    return list(cfg.checkpoint_modalities or cfg.modalities)


def world_start(cfg, student=STUDENT_PRETRAINED):
    "The modalities `pretrain_world_extractors` starts pretrained for `cfg`'s role: all for the teacher, those of `student` for the others."
    return list(cfg.modalities) if cfg.role == 'teacher' else [m for m in cfg.modalities if m in student]


def checked(path, cfg, student=STUDENT_PRETRAINED):
    """The record at `path`, refused when its model started from other extractors than this code starts `cfg`'s role with
    (records written before `pretrained` existed: the teacher's started pretrained, the student network's from scratch)."""
    rec = json.loads(Path(path).read_text())
    want = world_start(cfg, student)
    had = rec.get('pretrained', list(cfg.modalities) if cfg.role == 'teacher' else [])
    if had != want:
        raise ValueError(f'{path}: its {cfg.role} started with the extractors of {had or "none"} pretrained, this code starts it with '
                         f'{want or "none"}: give another --out (records of different starts are not mixed)')
    return rec


def one_seed(seed, ds, out, a, over):
    "Train (or reuse) the four models of one seed; their records {role: record}."
    cfgs = {r: make_karmma_config('world', r, device='cpu', seed=seed, **over) for r in ROLES}
    d = out / f'seed{seed}'; d.mkdir(parents=True, exist_ok=True)
    files = {r: d / f'{r}.json' for r in ROLES}
    read = lambda r: with_expected(checked(files[r], cfgs[r], a.student_pretrained), cfgs[r].modalities)
    if all(f.exists() for f in files.values()): return {r: read(r) for r in ROLES}
    cfgs = pretrain_world_extractors(cfgs, {'train': ds['pool_train'], 'held_out': ds['pool_held_out']}, d, epochs=a.pretrain_epochs, seed=seed,
                                     student_modalities=a.student_pretrained)
    for net in ('teacher', 'student') if a.student_pretrained else ('teacher',):
        pre = json.loads((d / f'{net}_extractors.json').read_text())
        print(f'  seed {seed}: {net} network, extractors pretrained on {len(ds["pool_train"])} pool clips, {a.pretrain_epochs} epochs; held-out pool accuracy % '
              + '; '.join(f"{m} {', '.join(f'{k} {v:.1f}' for k, v in r['held_out'].items() if k != 'clips')}" for m, r in pre['extractors'].items()),
              flush=True)
    recs, teacher = {}, None
    for role in ROLES:
        if files[role].exists() and not (role == 'teacher' and not files['student'].exists()):
            recs[role] = read(role); continue
        w0, c0 = time.time(), time.process_time()
        kw = dict(teacher=teacher.model, teacher_cache=teacher.cache) if role == 'student' else {}
        tr = KarmmaTrainer(cfgs[role], d / role, ds['train'], ds['val'], **kw)
        start = tr.epoch
        result = tr.fit()
        wall, cpu = time.time() - w0, time.process_time() - c0
        if role == 'teacher': teacher = tr
        if files[role].exists(): recs[role] = read(role); continue   # the teacher, rebuilt for the student
        res = evaluate_protocols({role: tr.model}, ds['test'], caches={role: tr.cache} if tr.cache is not None else None,
                                 seed=cfgs[role].eval_seed)
        recs[role] = dict(seed=seed, role=role, pretrained=started_pretrained(cfgs[role]), **figures(res, role, cfgs[role].modalities), stop=result['stop'],
                          best_val=result['best_val'], resumed_from_epoch=start, train_wall_s=round(wall, 1), train_cpu_s=round(cpu, 1),
                          test_clips=res['clips'], complete_clips=res['complete_clips'])
        atomic_write_text(files[role], json.dumps(recs[role], indent=1))
        s = result['stop']
        print(f"  seed {seed} {role:12s}: all {recs[role]['all']:.1f}, missing {recs[role]['missing']:.1f}, p0.9 {recs[role]['p0.9']:.1f}; "
              f"stopped after epoch {s['epoch']} ({s['reason']}, best epoch {s['best_epoch']}); {wall:.0f}s wall, {cpu:.0f}s CPU", flush=True)
    return recs


def cell(x): m, h = t_interval(x); return f'{m:.1f} ± {h:.1f}' if np.isfinite(h) else f'{m:.1f}'


def summary(recs, pilot=None):
    "Print the tables over the seeds of `recs` [{role: record}] (and, with a `pilot` of the first seeds, Stein's plan and intervals)."
    n = len(recs)
    print(f'\n{n} seed(s). Test accuracy % (mean ± 95% t-interval over seeds); chance 4.2%. '
          f"Bounds: RGB alone {modality_bound(('rgb',)):.1f}, flow {modality_bound(('flow',)):.1f}, audio {modality_bound(('audio',)):.1f}")
    for title, cols in GROUPS.items():
        print(f"\n{title}\n{'model':28s}" + ''.join(f'{m:>14s}' for m in cols))
        for r in ROLES: print(f'{r:28s}' + ''.join(f'{cell([x[r][m] for x in recs]):>14s}' for m in cols))
        for a_, b_ in PAIRS:
            print(f'{a_ + " - " + b_:28s}' + ''.join(f'{cell(diffs(recs, a_, b_, m)):>14s}' for m in cols))
    print(f'\nseeds needed for a ±{HALF_WIDTH:.0f}-point 95% interval at the observed spread'
          + (' (needs 2 or more seeds)' if n < 2 else ''))
    rows = {r: lambda x, m, r=r: x[r][m] for r in ROLES}
    rows.update({f'{a_} - {b_}': (lambda x, m, a_=a_, b_=b_: diffs([x], a_, b_, m)[0]) for a_, b_ in PAIRS})
    for cols in GROUPS.values():
        print(f"{'':28s}" + ''.join(f'{m:>8s}' for m in cols))
        for name, f in rows.items():
            sd = lambda m: float(np.std([f(x, m) for x in recs], ddof=1)) if n > 1 else None
            print(f'{name:28s}' + ''.join(f'{str(seeds_needed(sd(m)) or "-"):>8s}' for m in cols))
    if pilot:
        print(f"\nStein's two-stage rule, pilot = the first {pilot} seeds: seeds the ±{HALF_WIDTH:g}-point interval needs in all "
              f"(planned), then the two-stage interval over the {n} seeds given (valid where {n} >= planned)")
        for a_, b_ in PAIRS:
            for cols in GROUPS.values():
                d = {m: diffs(recs, a_, b_, m) for m in cols}
                print(f"{a_ + ' - ' + b_:28s}" + ''.join(f'{m:>8s}' for m in cols))
                print(f"{'  planned':28s}" + ''.join(f'{stein_seeds(d[m][:pilot]):>8d}' for m in cols))
                print(f"{'  two-stage':28s}" + ''.join('{:>14s}'.format('{:+.1f} ± {:.1f}'.format(*stein_interval(d[m], pilot))) for m in cols))
    print('\nwhere training stopped (epoch, reason) per seed:')
    for r in ROLES: print(f'{r:14s} ' + '; '.join(f"seed {x[r]['seed']}: {x[r]['stop']['epoch']} ({x[r]['stop']['reason']})" for x in recs))


def diffs(recs, a_, b_, m):
    "Per seed, `a_`'s metric `m` less `b_`'s."
    return [x[a_][m] - x[b_][m] for x in recs]


def paired(recs, a_, b_, m):
    "Mean and 95% t-interval over the seeds of `a_`'s metric `m` less `b_`'s."
    return t_interval(diffs(recs, a_, b_, m))


def figure(recs, path, pilot=None):
    "Write <path>.png and <path>.md: drop curves and paired differences over the seeds of `recs`, both estimators (and Stein's intervals with a `pilot`)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n, path = len(recs), Path(path)
    rule = recs[0]['student']['stop']
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for r, c in zip(ROLES, ('0.4', 'C3', 'C0', 'C2')):
        mh = np.array([t_interval([x[r][f'e{p}'] for x in recs]) for p in DROPS])
        axes[0].plot(DROPS, mh[:, 0], color=c, label=r); axes[0].fill_between(DROPS, *(mh[:, 0] + s_ * mh[:, 1] for s_ in (-1, 1)), color=c, alpha=.15)
    axes[0].set(xlabel='drop probability p', ylabel='test accuracy % (exact expectation)', title='the four models')
    axes[0].legend(fontsize=7)
    for ax, (a_, b_) in zip(axes[1:], PAIRS):
        for k, (key, name, dx) in enumerate((('e', 'exact expectation over the draws', -0.012), ('p', 'one draw per clip', 0.012))):
            mh = np.array([paired(recs, a_, b_, f'{key}{p}') for p in DROPS])
            ax.errorbar(np.array(DROPS) + dx, mh[:, 0], yerr=mh[:, 1], fmt='o-' if k == 0 else 's:', ms=3, capsize=2, label=name,
                        color='C0' if k == 0 else '0.5')
        ax.axhline(0, color='0.3', lw=.8); ax.axhspan(-HALF_WIDTH, HALF_WIDTH, color='0.9', zorder=0)
        ax.set(xlabel='drop probability p', ylabel='paired difference, points', title=f'{a_} − {b_}'); ax.legend(fontsize=7)
    fig.suptitle(f'KARMMA in the miniature world: {n} seeds, mean ± 95% t-interval over the seeds (grey band: ±{HALF_WIDTH:g}); '
                 f'training stops after {rule["patience"]} epochs without a better validation accuracy, at most {rule["max_epochs"]}', fontsize=9)
    fig.tight_layout(); path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix('.png'), dpi=120); plt.close(fig)
    head = '| difference | estimator | ' + ' | '.join(f'p = {p:g}' for p in DROPS) + ' |'
    lines = [head, '|' + '---|' * (len(DROPS) + 2)]
    for a_, b_ in PAIRS:
        for key, name in (('e', 'exact expectation'), ('p', 'one draw per clip')):
            lines.append(f'| {a_} − {b_} | {name} | ' + ' | '.join(
                '{:+.1f} ± {:.1f}'.format(*paired(recs, a_, b_, f'{key}{p}')) for p in DROPS) + ' |')
    widest = {f'{a_} − {b_}': max(paired(recs, a_, b_, f'e{p}')[1] for p in DROPS) for a_, b_ in PAIRS}
    caption = (f'Paired test-accuracy differences (points) at each drop probability, mean ± 95% t-interval over {n} training seeds '
               f'({", ".join(str(x["student"]["seed"]) for x in recs)}), on the fixed test split ({recs[0]["student"]["test_clips"]} clips, '
               f'{recs[0]["student"]["complete_clips"]} with all three modalities); every model trained until its validation accuracy had not '
               f'improved for {rule["patience"]} epochs, at most {rule["max_epochs"]}. Exact expectation: the accuracy at p averaged exactly '
               f'over the drop draws, on the clips with all three modalities; one draw per clip: the drops drawn once, on all clips. '
               'Widest exact interval: ' + ', '.join(f'{k} ±{v:.1f}' for k, v in widest.items()) + '.')
    text = '### KARMMA in the miniature world, over seeds\n\n' + '\n'.join(lines) + f'\n\n*{caption}*\n'
    if pilot:
        two = [head, lines[1]]
        for a_, b_ in PAIRS:
            for key, name in (('e', 'exact expectation'), ('p', 'one draw per clip')):
                two.append(f'| {a_} − {b_} | {name} | ' + ' | '.join(
                    '{:+.1f} ± {:.1f}'.format(*stein_interval(diffs(recs, a_, b_, f'{key}{p}'), pilot)) for p in DROPS) + ' |')
        cells = [(diffs(recs, a_, b_, f'{k}{p}'), paired(recs, a_, b_, f'{k}{p}')[1]) for a_, b_ in PAIRS for k in 'ep' for p in DROPS]
        need = max(stein_seeds(d[:pilot]) for d, _ in cells)
        wider = [h for d, h in cells if h > stein_interval(d, pilot)[1] + 1e-9]
        text += ("\n### The same differences, Stein's two-stage intervals\n\n" + '\n'.join(two) + '\n\n'
                 f'*The number of seeds was fixed from the first {pilot} (the pilot) before the others were trained: Stein\'s rule '
                 f'n = max(n0, ⌈(t(0.975, n0−1)·s0/{HALF_WIDTH:g})²⌉) for each difference, estimator and p asks for at most {need} '
                 f'seeds in all; {n} were trained. Each interval is the mean over the {n} seeds ± t(0.975, {pilot - 1})·s0/√{n}, '
                 f's0 the standard deviation of the pilot\'s {pilot} differences: under normality its coverage is exactly 95% whatever '
                 f'the seeds after the pilot give, and with n >= the rule\'s count it is at most ±{HALF_WIDTH:g}. The ordinary interval '
                 f'over the {n} seeds (first table) is wider than the two-stage one in {len(wider)} of the {len(cells)} cells'
                 + (f' (up to ±{max(wider):.1f}): there the seeds after the pilot spread more than the pilot did, and the two-stage '
                    'interval rests on the pilot\'s smaller spread and on normality.*\n' if wider else '.*\n'))
    path.with_suffix('.md').write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0], help='training seeds (the benchmark and pool are fixed)')
    ap.add_argument('--out', default='runs/karmma-world-study')
    ap.add_argument('--pretrain-epochs', type=int, default=15)
    ap.add_argument('--pool-clips', type=int, default=None, help='clips of the pretraining pool (default 1200)')
    ap.add_argument('--videos-per-class', type=int, default=None, help='clips per class of the benchmark (default 30)')
    ap.add_argument('--max-epochs', type=int, default=None, help="most epochs per model (default: the scale's 120)")
    ap.add_argument('--patience', type=int, default=None, help="epochs without a better validation accuracy that stop (default 30)")
    ap.add_argument('--student-pretrained', nargs='*', choices=('rgb', 'flow', 'audio'), default=list(STUDENT_PRETRAINED),
                    help="the student network's extractors that start pretrained on the pool (default all three; none: from scratch)")
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--figure', default=None, help='also write <figure>.png and <figure>.md from the seeds given')
    ap.add_argument('--pilot', type=int, default=None,
                    help="the first PILOT seeds given are the pilot of Stein's two-stage rule: plan and two-stage intervals")
    a = ap.parse_args(argv)
    if a.pilot is not None and not 2 <= a.pilot <= len(a.seeds):
        ap.error(f'--pilot must be 2 to the {len(a.seeds)} seeds given, got {a.pilot}')
    torch.set_num_threads(a.threads)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    over = dict(epochs=a.max_epochs, patience=a.patience)
    w0, c0 = time.time(), time.process_time()
    ds = data(make_karmma_config('world', 'student', **over), a.videos_per_class, a.pool_clips)
    recs = [one_seed(s, ds, out, a, over) for s in a.seeds]
    summary(recs, a.pilot)
    if a.figure: figure(recs, a.figure, a.pilot)
    print(f'\ntotal {time.time() - w0:.0f}s wall, {time.process_time() - c0:.0f}s CPU')
    return recs


if __name__ == '__main__':
    main()

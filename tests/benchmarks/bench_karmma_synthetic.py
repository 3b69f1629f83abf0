"""KARMMA on the synthetic multimodal benchmark, over several seeds: is the teacher the strongest model, and what does
distillation add to robustness against missing modalities?

For each seed: the teacher's tiny extractors are pretrained alone (`pretrain_extractors`, standing in for Kinetics-400)
and frozen; the teacher (CE + InfoNCE) trains its fusion block and MLP; then the student (modality dropout, CE + KD from
the teacher), the `dropout_only` baseline (the student's network and modality dropout, no teacher: the ablation of
distillation) and the `ce_only` baseline. All four are scored on the test split under both protocols (every modality
subset on the clips that hold all three modalities; each modality dropped with probability p, at least one kept).

Per seed it records: accuracy with every modality, the mean over the six subsets that lack at least one modality,
and the accuracy at p = 0.5 and p = 0.9. It prints the mean over seeds with a 95% t-interval, and the paired
differences student - dropout_only (what distillation adds) and student - ce_only with their 95% t-intervals over
seeds: an interval that excludes 0 says the effect is larger than the seed-to-seed spread.

    python tests/benchmarks/bench_karmma_synthetic.py [--seeds 5] [--first 0] [--out runs/karmma-synthetic-study]

The summary covers every seed{n}.json in --out.
"""
import argparse, json, math, time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from m2df.karmma.data import KarmmaDataset, karmma_synthetic_root
from m2df.karmma.model import make_karmma_config
from m2df.karmma.train import CachedClips, KarmmaTrainer, evaluate_protocols, modality_subsets, pretrain_extractors

ROLES = ('teacher', 'student', 'dropout_only', 'ce_only')
METRICS = ('all', 'missing', 'p0.5', 'p0.9')


def one_seed(seed, root, out, pretrain_epochs, **over):
    "Train the four models of one seed; their figures {role: {metric: accuracy %}}."
    cfgs = {r: make_karmma_config('synthetic', r, device='cpu', seed=seed, **over) for r in ROLES}
    c = cfgs['student']
    ds = {s: CachedClips(KarmmaDataset(root, s, modalities=c.modalities, frames=c.frames, size=c.size, rgb_norm=c.rgb_statistics))
          for s in ('train', 'val', 'test')}
    t0 = time.time()
    weights = out / f'seed{seed}' / 'teacher_extractors.pt'
    if not weights.exists():
        acc = pretrain_extractors(cfgs['teacher'], ds['train'], weights, epochs=pretrain_epochs, seed=seed)
        print(f'  seed {seed}: extractors pretrained ({ {m: round(a, 1) for m, a in acc.items()} } % on train) in {time.time() - t0:.0f}s')
    cfgs['teacher'] = cfgs['teacher'].replace(extractor_checkpoint=str(weights))
    teacher = KarmmaTrainer(cfgs['teacher'], out / f'seed{seed}' / 'teacher', ds['train'], ds['val'])
    teacher.fit()
    models = {'teacher': teacher.model}
    for r in ROLES[1:]:
        kw = dict(teacher=teacher.model, teacher_cache=teacher.cache) if r == 'student' else {}
        tr = KarmmaTrainer(cfgs[r], out / f'seed{seed}' / r, ds['train'], ds['val'], **kw)
        tr.fit(); models[r] = tr.model
    res = evaluate_protocols(models, ds['test'], caches={'teacher': teacher.cache}, seed=2024)
    full = '+'.join(c.modalities)
    fewer = ['+'.join(s) for s in modality_subsets(c.modalities) if len(s) < len(c.modalities)]
    fig = {}
    for n, r in res['models'].items():
        acc = {k: v['accuracy'] for k, v in r['subsets'].items()}
        fig[n] = {'all': acc[full], 'missing': float(np.mean([acc[k] for k in fewer])),
                  'p0.5': r['drop'][0.5]['accuracy'], 'p0.9': r['drop'][0.9]['accuracy'], 'subsets': acc}
    print(f'  seed {seed} ({time.time() - t0:.0f}s): ' + '; '.join(f"{n} {fig[n]['all']:.1f}/{fig[n]['missing']:.1f}/{fig[n]['p0.9']:.1f}" for n in ROLES))
    return fig


def t_interval(x):
    "Mean and 95% t-interval half-width of a sample."
    x = np.asarray(x, float)
    if len(x) < 2: return float(x.mean()), float('nan')
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, default=5)
    ap.add_argument('--first', type=int, default=0, help='first seed (several processes can share --out)')
    ap.add_argument('--pretrain-epochs', type=int, default=15)
    ap.add_argument('--out', default='runs/karmma-synthetic-study')
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    root = karmma_synthetic_root()
    t0 = time.time()
    figs = []
    for s in range(a.first, a.first + a.seeds):
        f = out / f'seed{s}.json'
        if not f.exists(): f.write_text(json.dumps(one_seed(s, root, out, a.pretrain_epochs), indent=1))
    figs = [json.loads(f.read_text()) for f in sorted(out.glob('seed*.json'))]
    print(f'\n{len(figs)} seeds, {time.time() - t0:.0f}s. Test accuracy % (mean ± 95% t-interval over seeds); chance 4.2%')
    print(f"{'model':14s}" + ''.join(f'{m:>16s}' for m in METRICS))
    for n in ROLES:
        print(f'{n:14s}' + ''.join('{:>16s}'.format('%.1f ± %.1f' % t_interval([f[n][m] for f in figs])) for m in METRICS))
    print('\npaired differences over seeds (mean ± 95% t-interval):')
    for a_, b_ in (('student', 'dropout_only'), ('student', 'ce_only'), ('teacher', 'student')):
        print(f'{a_ + " - " + b_:26s}' + ''.join('{:>16s}'.format('%+.1f ± %.1f' % t_interval([f[a_][m] - f[b_][m] for f in figs]))
                                                for m in METRICS))


if __name__ == '__main__':
    main()

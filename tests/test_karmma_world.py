"""Tests of KARMMA in the miniature world (m2df.karmma.world): the class design and its bound, the sound, the benchmark and
its pretraining pool (disjoint streams and clips), the extractors pretrained on per-modality attributes, the stopping
criterion, tests/benchmarks/bench_karmma_world.py and `papermill nbs/karmma.ipynb -p dataset world`, at tiny scale."""
import importlib.util, json, math, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m2df.karmma.data import KarmmaDataset
from m2df.karmma.model import KarmmaModel, make_karmma_config
from m2df.karmma.train import CachedClips, KarmmaTrainer, stopping_reason, pretrain_extractors, probe_accuracy, UnimodalProbe
from m2df.karmma.world import (MODALITY_SHOWS, POOL_TARGETS, WORLD_KARMMA_CLASSES, WORLD_SOUNDS, karmma_pool_item, karmma_pool_rng,
                               karmma_world_rng, karmma_world_video, load_karmma_pool, load_karmma_world, make_karmma_pool,
                               make_karmma_world, modality_bound, pretrain_world_extractors, world_sound)
from m2df.video import open_video

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = [('rgb',), ('flow',), ('audio',), ('rgb', 'flow'), ('rgb', 'audio'), ('flow', 'audio'), ('rgb', 'flow', 'audio')]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def bayes_accuracy(mods):
    "A second implementation of the bound: the accuracy of the best guesser that sees the attributes of `mods`, by enumeration."
    seen = {a for m in mods for a in MODALITY_SHOWS[m]}
    right = 0
    for c in WORLD_KARMMA_CLASSES:     # the true class; the guesser knows only what it sees and guesses one class of that look
        look = [d for d in WORLD_KARMMA_CLASSES if all(getattr(d, a) == getattr(c, a) for a in seen)]
        right += 1 / len(look)         # every class of the look is equally likely: it is right 1 / |look| of the time
    return 100 * right / len(WORLD_KARMMA_CLASSES)


def test_bound_of_every_subset_by_hand_and_by_enumeration():
    hand = [50., 100 / 6, 100 / 12, 50., 100., 100 / 3, 100.]     # 12/24, 4/24, 2/24, 12/24, 24/24, 8/24, 24/24
    for s, b in zip(SUBSETS, hand):
        assert math.isclose(modality_bound(s), b), (s, modality_bound(s), b)
        assert math.isclose(bayes_accuracy(s), b), s


def test_the_label_is_a_function_of_no_single_modality():
    assert len(WORLD_KARMMA_CLASSES) == 24
    for m, shows in MODALITY_SHOWS.items():
        looks = {}
        for c in WORLD_KARMMA_CLASSES: looks.setdefault(tuple(getattr(c, a) for a in shows), set()).add(c.name)
        assert max(len(v) for v in looks.values()) > 1, m             # two classes look the same to m
        assert modality_bound((m,)) <= 50, m
    assert MODALITY_SHOWS['audio'] == ('sound',) and 'colour' not in MODALITY_SHOWS['flow']


def test_buzz_has_harmonics_and_the_bell_none():
    x = {s: world_sound(s, 1.5, 16_000, np.random.default_rng(5)) for s in WORLD_SOUNDS}
    f = np.fft.rfftfreq(24_000, 1 / 16_000)
    sp = {s: np.abs(np.fft.rfft(w)) for s, w in x.items()}
    f0 = f[sp['bell'].argmax()]
    assert 220 <= f0 <= 880
    for k in (2, 3):                                                     # harmonic k at 1/k of the fundamental
        r = {s: sp[s][np.abs(f - k * f0) < 3].max() / sp[s][np.abs(f - f0) < 3].max() for s in x}
        assert r['bell'] < 0.02 and abs(r['buzz'] - 1 / k) < 0.1, (k, r)
    with pytest.raises(ValueError, match="'drum'"): world_sound('drum', 1, 16_000, np.random.default_rng(0))


def test_benchmark_clip_shows_its_class_and_is_seeded():
    f, w, a = karmma_world_video('green_moving_right_bell', 2, seed=0)
    f2, w2, _ = karmma_world_video('green_moving_right_bell', 2, seed=0)
    assert (f == f2).all() and (w == w2).all() and (a.colour, a.motion) == ('green', 'moving right')
    f3, _, _ = karmma_world_video('green_moving_right_bell', 2, seed=1)
    assert f3.shape != f.shape or (f3 != f).any()


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp('kw')
    return make_karmma_world(d / 'w', videos_per_class=5), make_karmma_pool(d / 'p', clips=40, held_out=0.25)


def test_benchmark_splits_by_clip_with_audio_missing(small):
    root, _ = small
    sp = {s: load_karmma_world(root, s) for s in ('train', 'val', 'test')}
    assert [len(sp[s]) for s in sp] == [72, 24, 24]
    ids = [{r.id for r in sp[s].records} for s in sp]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for s in sp: assert {r.label for r in sp[s].records} == set(range(24))     # every class in every split
    silent = (root / 'audio_missing.txt').read_text().split()
    assert len(silent) == 7 + 2 + 2                                          # round(10 % of 72, 24, 24)
    ds = KarmmaDataset(sp['test'], frames=4, size=32)
    got = {ds.records[i].id: ds[i]['audio'] is None for i in range(len(ds))}
    assert {k for k, v in got.items() if v} == {s for s in silent if s in got}


def test_pool_streams_and_clips_are_disjoint_from_the_benchmark(small):
    root, pool = small
    assert karmma_pool_rng(0, 0).integers(2 ** 62) != karmma_world_rng(0, WORLD_KARMMA_CLASSES[0].name, 0).integers(2 ** 62)
    digest = lambda p: open_video(p).read(np.arange(2)).tobytes()
    bench = {digest(r.path) for s in ('train', 'val', 'test') for r in load_karmma_world(root, s).records}
    pool_clips = load_karmma_pool(pool, 'train').records + load_karmma_pool(pool, 'held_out').records
    assert len(pool_clips) == 40 and len(bench) == 120
    assert not ({digest(r.path) for r in pool_clips} & bench)
    assert not ({r.id for r in pool_clips} & {r.id for s in ('train', 'val', 'test') for r in load_karmma_world(root, s).records})
    items = json.loads((pool / 'pool.json').read_text())
    assert [it['held_out'] for it in items] == [False] * 30 + [True] * 10
    assert items[4]['colour'] == karmma_pool_item(0, 4)[2]['colour']


def test_extractors_pretrained_on_their_own_attributes(small, tmp_path):
    _, pool = small
    cfg = make_karmma_config('world', 'teacher', device='cpu')
    ds = {p: CachedClips(KarmmaDataset(load_karmma_pool(pool, p), modalities=cfg.modalities, frames=cfg.frames, size=cfg.size))
          for p in ('train', 'held_out')}
    pretrain_extractors(cfg, ds['train'], tmp_path / 'ext.pt', epochs=1, batch_size=16, targets=POOL_TARGETS, held_out=ds['held_out'])
    rec = json.loads((tmp_path / 'ext.json').read_text())['extractors']
    assert {m: r['targets'] for m, r in rec.items()} == {'rgb': {'colour': 6, 'motion': 8}, 'flow': {'motion': 8}, 'audio': {'sound': 2}}
    assert rec['flow']['clips'] == 30 and rec['audio']['held_out']['clips'] == 10 and set(rec['rgb']['held_out']) == {'colour', 'motion', 'all', 'clips'}
    sd = torch.load(tmp_path / 'ext.pt', weights_only=True)
    assert set(sd) == {'rgb', 'flow', 'audio'}
    with pytest.raises(ValueError, match='give each its targets'):
        pretrain_extractors(cfg, ds['train'], tmp_path / 'x.pt', epochs=1, targets={'rgb': {'colour': 6}})


def test_each_network_starts_from_its_own_pool_extractors(small, tmp_path):
    """The teacher's file is exactly pretrain_extractors' on every modality; the student network's holds what the start asks for
    (default all three; ('rgb', 'flow'): its audio starts random; (): nothing, from scratch); a file of another start is refused."""
    _, pool = small
    roles = ('teacher', 'student', 'dropout_only', 'ce_only')
    cfgs0 = {r: make_karmma_config('world', r, device='cpu', seed=3) for r in roles}
    ds = {p: CachedClips(KarmmaDataset(load_karmma_pool(pool, p), modalities=cfgs0['student'].modalities, frames=4, size=32))
          for p in ('train', 'held_out')}
    cfgs = pretrain_world_extractors(cfgs0, ds, tmp_path / 'all', epochs=1, seed=3)
    assert {r: (Path(c.extractor_checkpoint).name, c.checkpoint_modalities) for r, c in cfgs.items()} == {
        'teacher': ('teacher_extractors.pt', None), **{r: ('student_extractors.pt', None) for r in roles[1:]}}
    pretrain_extractors(cfgs0['teacher'], ds['train'], tmp_path / 'direct.pt', epochs=1, seed=3, targets=POOL_TARGETS, held_out=ds['held_out'],
                        batch_size=32)
    mine, direct = (torch.load(tmp_path / f, weights_only=True) for f in ('all/teacher_extractors.pt', 'direct.pt'))
    assert mine.keys() == direct.keys() == {'rgb', 'flow', 'audio'}
    assert all(torch.equal(mine[m][k], direct[m][k]) for m in direct for k in direct[m])
    st = torch.load(tmp_path / 'all' / 'student_extractors.pt', weights_only=True)
    assert set(st) == {'rgb', 'flow', 'audio'}
    assert json.loads((tmp_path / 'all' / 'student_extractors.json').read_text())['network'] == 'student'
    torch.manual_seed(0); model = KarmmaModel(cfgs['dropout_only'])
    eq = lambda a, b: all(torch.equal(x, b[k]) for k, x in a.state_dict().items())
    assert all(eq(model.extractors[m], st[m]) for m in st)
    assert any(p.requires_grad for p in model.extractors['rgb'].parameters())       # fine-tuned, not frozen
    mtime = (tmp_path / 'all' / 'student_extractors.pt').stat().st_mtime_ns
    pretrain_world_extractors({'ce_only': cfgs0['ce_only']}, ds, tmp_path / 'all', epochs=1, seed=3)   # reused
    assert (tmp_path / 'all' / 'student_extractors.pt').stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match=r"student_extractors.pt holds pretrained extractors of \['audio', 'flow', 'rgb'\].*another folder"):
        pretrain_world_extractors(cfgs0, ds, tmp_path / 'all', epochs=1, seed=3, student_modalities=('rgb', 'flow'))

    part = pretrain_world_extractors(cfgs0, ds, tmp_path / 'part', epochs=1, seed=3, student_modalities=('flow', 'rgb'))
    st = torch.load(tmp_path / 'part' / 'student_extractors.pt', weights_only=True)
    rec = json.loads((tmp_path / 'part' / 'student_extractors.json').read_text())
    assert set(st) == set(rec['extractors']) == {'rgb', 'flow'} and rec['extractors']['flow']['targets'] == {'motion': 8}
    assert part['student'].checkpoint_modalities == ('rgb', 'flow')                 # in the config's order
    torch.manual_seed(0); model = KarmmaModel(part['dropout_only'])
    torch.manual_seed(0); scratch = KarmmaModel(cfgs0['dropout_only'])
    assert eq(model.extractors['rgb'], st['rgb']) and eq(model.extractors['flow'], st['flow'])
    assert not eq(scratch.extractors['rgb'], st['rgb'])
    assert eq(model.extractors['audio'], scratch.extractors['audio'].state_dict())

    none = pretrain_world_extractors(cfgs0, ds, tmp_path / 'none', epochs=1, seed=3, student_modalities=())
    assert sorted(f.name for f in (tmp_path / 'none').iterdir()) == ['teacher_extractors.json', 'teacher_extractors.pt']
    assert all(none[r] == cfgs0[r] for r in roles[1:]) and none['teacher'].extractor_checkpoint
    with pytest.raises(ValueError, match='non-empty subset'):
        pretrain_extractors(cfgs0['student'], ds['train'], tmp_path / 'x.pt', epochs=1, modalities=('rgb', 'boxes'))


def test_probe_accuracy_counts_by_hand():
    "A probe whose heads answer fixed classes: accuracy per target and all-right, on the clips holding its modality."
    class Data(torch.utils.data.Dataset):
        def __len__(self): return 4
        def __getitem__(self, i):
            return dict(id=str(i), label={'colour': [0, 0, 1, 0][i], 'motion': [2, 1, 2, 2][i]}, rgb=torch.zeros(4, 3, 32, 32) if i < 3 else None)
    cfg = make_karmma_config('world', 'teacher', device='cpu')
    probe = UnimodalProbe(cfg, 'rgb', {'colour': 2, 'motion': 3})
    for t, k in (('colour', 0), ('motion', 2)):             # constant heads: colour 0, motion 2
        probe.heads[t].weight.data.zero_(); probe.heads[t].bias.data = torch.nn.functional.one_hot(torch.tensor(k), probe.heads[t].out_features).float()
    from m2df.karmma.data import collate_modalities
    import functools
    r = probe_accuracy(probe, Data(), collate_fn=functools.partial(collate_modalities, shapes={'rgb': (4, 3, 32, 32)}))
    assert r['clips'] == 3                                               # the fourth has no RGB
    assert all(math.isclose(r[k], v, rel_tol=1e-6) for k, v in dict(colour=200 / 3, motion=200 / 3, all=100 / 3).items())


def test_stopping_reason_by_hand():
    h = [dict(epoch=e + 1, val_accuracy=a) for e, a in enumerate([10, 20, 20, 19, 25, 25, 25])]
    assert [stopping_reason(h[:n], 10, 2) for n in range(1, 5)] == [None, None, None, 'patience']
    assert [stopping_reason(h[:n], 10, 3) for n in range(1, 8)] == [None] * 7
    assert stopping_reason(h[:5], 10, 3, min_delta=5) == 'patience' and stopping_reason(h[:4], 10, 3, min_delta=5) is None
    assert stopping_reason(h[:3], 3) == 'max_epochs' and stopping_reason(h[:2], 3) is None
    assert stopping_reason(h[:3], 3, 1) == 'patience'                   # both hold: patience is named


def test_trainer_stops_on_patience_and_records_it(small, tmp_path):
    root, _ = small
    cfg = make_karmma_config('world', 'dropout_only', device='cpu', epochs=30, patience=1)
    ds = {s: CachedClips(KarmmaDataset(load_karmma_world(root, s), frames=cfg.frames, size=cfg.size)) for s in ('train', 'val')}
    r = KarmmaTrainer(cfg, tmp_path / 'r', ds['train'], ds['val']).fit()
    v = [json.loads(l) for l in (tmp_path / 'r' / 'val.jsonl').read_text().splitlines()]
    assert r['stop']['reason'] == 'patience' and r['stop']['epoch'] == len(v) == r['epochs'] < 30
    assert stopping_reason(v, 30, 1) == 'patience' and stopping_reason(v[:-1], 30, 1) is None   # the first epoch it held
    assert r['stop']['best_epoch'] == len(v) - 1 and not v[-1]['best']                         # patience 1: one epoch without gain
    assert json.loads((tmp_path / 'r' / 'result.json').read_text())['stop'] == r['stop']
    again = KarmmaTrainer(cfg, tmp_path / 'r', ds['train'], ds['val']).fit()                   # resumed after it stopped
    assert again['stop'] == r['stop'] and len((tmp_path / 'r' / 'val.jsonl').read_text().splitlines()) == len(v)


def load_bench():
    spec = importlib.util.spec_from_file_location('bench_world', ROOT / 'tests' / 'benchmarks' / 'bench_karmma_world.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def test_bench_statistics_by_hand():
    b = load_bench()
    m, h = b.t_interval([1., 2., 3.])
    assert m == 2. and math.isclose(h, 4.302652729749462 / math.sqrt(3))   # t(0.975, 2) × sd 1 / √3
    assert b.seeds_needed(3.) == 7                  # t(0.975, 5)=2.571 > √6=2.449; t(0.975, 6)=2.447 <= √7=2.646
    assert b.seeds_needed(0.) == 2 and b.seeds_needed(None) is None and b.seeds_needed(float('nan')) is None
    assert b.seeds_needed(6.) == 18                 # t(16)·6/√17 = 3.085 > 3; t(17)·6/√18 = 2.984 <= 3
    # Stein's two-stage rule: pilot 0, 2, 4 (sd 2): (t(0.975, 2)·2/3)² = (4.3027·2/3)² = 8.228 -> 9 seeds in all
    assert b.stein_seeds([0., 2., 4.]) == 9 and b.stein_seeds([0., 2., 4.], half=10.) == 3 and b.stein_seeds([5., 5.]) == 2
    m, h = b.stein_interval([0., 2., 4.] + [1.] * 6, 3)          # mean 12/9; half-width from the pilot only: 4.3027·2/√9
    assert math.isclose(m, 4 / 3) and math.isclose(h, 4.302652729749462 * 2 / 3)
    m, h = b.stein_interval([0., 2., 4.] + [100.] * 6, 3)        # the seeds after the pilot move the mean, never the width
    assert math.isclose(m, 606 / 9) and math.isclose(h, 4.302652729749462 * 2 / 3)
    with pytest.raises(ValueError, match='2 to 3'): b.stein_interval([0., 2., 4.], 4)
    with pytest.raises(ValueError, match='2 or more'): b.stein_seeds([1.])


def test_bench_figure_with_a_pilot_by_hand(tmp_path):
    b = load_bench()
    diffs = [0., 2., 4.] + [1.] * 6                    # student − dropout_only at every metric; student − ce_only: 10 throughout
    def rec(role, seed, v):
        r = {f'{k}{p}': v for k in 'ep' for p in b.DROPS}
        return dict(r, seed=seed, role=role, stop=dict(patience=30, max_epochs=120), test_clips=144, complete_clips=130)
    recs = [{'teacher': rec('teacher', s, 50.), 'student': rec('student', s, 50. + d), 'dropout_only': rec('dropout_only', s, 50.),
             'ce_only': rec('ce_only', s, 40. + d)} for s, d in enumerate(diffs)]
    b.figure(recs, tmp_path / 'k', pilot=3)
    md = (tmp_path / 'k.md').read_text()
    ordinary, two = md.split("Stein's two-stage intervals")
    sd = np.std(diffs, ddof=1)                         # ordinary: t(0.975, 8)·sd/3 over the nine
    assert f'| student − dropout_only | exact expectation | +1.3 ± {2.306004135 * sd / 3:.1f} |' in ordinary
    assert '| student − dropout_only | exact expectation | +1.3 ± 2.9 |' in two        # 4.3027·2/3 = 2.868
    assert '| student − ce_only | one draw per clip | +10.0 ± 0.0 |' in two             # a pilot without spread
    assert 'at most 9 seeds in all; 9 were trained' in two and 't(0.975, 2)' in two
    assert 'wider than the two-stage one in 0 of the 40 cells.' in two
    spread = [dict(r, student={**r['student'], **{f'{k}{p}': r['student'][f'{k}{p}'] + (30. if i == 8 else 0.) for k in 'ep'
                                                  for p in b.DROPS}}) for i, r in enumerate(recs)]   # the last seed 30 points off
    b.figure(spread, tmp_path / 'tail', pilot=3)
    sd = max(np.std(np.array(diffs) + np.eye(9)[8] * 30, ddof=1), np.std([10.] * 8 + [40.], ddof=1))
    tail = (tmp_path / 'tail.md').read_text().split("Stein's two-stage intervals")[1]
    assert f'in 40 of the 40 cells (up to ±{2.306004135 * sd / 3:.1f})' in tail   # the student moved: both differences, everywhere
    b.figure(recs, tmp_path / 'plain')
    assert "two-stage" not in (tmp_path / 'plain.md').read_text()

def test_bench_refuses_a_pilot_larger_than_the_seeds(capsys):
    with pytest.raises(SystemExit): load_bench().main(['--seeds', '0', '1', '--pilot', '3'])
    assert '--pilot must be 2 to the 2 seeds given, got 3' in capsys.readouterr().err


def test_bench_refuses_records_of_another_start(tmp_path):
    "A record says which extractors its model started pretrained; a record of another start is refused, naming the file."
    b = load_bench()
    cfg = {r: make_karmma_config('world', r, device='cpu') for r in b.ROLES}
    assert [b.world_start(cfg[r]) for r in b.ROLES] == [['rgb', 'flow', 'audio']] * 4
    assert [b.world_start(cfg[r], ('flow', 'rgb')) for r in b.ROLES] == [['rgb', 'flow', 'audio']] + [['rgb', 'flow']] * 3
    assert b.world_start(cfg['ce_only'], ()) == [] and b.world_start(cfg['teacher'], ()) == ['rgb', 'flow', 'audio']
    assert b.started_pretrained(cfg['student']) == [] and b.started_pretrained(cfg['teacher'].replace(extractor_checkpoint='t.pt')) == ['rgb', 'flow', 'audio']
    assert b.started_pretrained(cfg['ce_only'].replace(extractor_checkpoint='s.pt', checkpoint_modalities=('rgb', 'flow'))) == ['rgb', 'flow']
    f = tmp_path / 'r.json'
    f.write_text(json.dumps(dict(all=90.)))                 # written before `pretrained`: a teacher pretrained, a student from scratch
    assert b.checked(f, cfg['teacher'])['all'] == 90. and b.checked(f, cfg['student'], ())['all'] == 90.
    with pytest.raises(ValueError, match=r"r\.json: its student started with the extractors of none pretrained.*\['rgb', 'flow', 'audio'\]"):
        b.checked(f, cfg['student'])
    f.write_text(json.dumps(dict(all=80., pretrained=['rgb', 'flow'])))
    assert b.checked(f, cfg['dropout_only'], ('rgb', 'flow'))['all'] == 80.
    for c, start in ((cfg['teacher'], ('rgb', 'flow')), (cfg['dropout_only'], ('rgb', 'flow', 'audio')), (cfg['ce_only'], ())):
        with pytest.raises(ValueError, match='another --out'): b.checked(f, c, start)


def test_bench_trains_four_models_records_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('M2DF_CACHE', str(tmp_path / 'cache'))
    b = load_bench()
    args = ['--seeds', '0', '--out', str(tmp_path / 'out'), '--videos-per-class', '5', '--pool-clips', '40', '--pretrain-epochs', '1',
            '--max-epochs', '2']
    recs = b.main(args)
    out = capsys.readouterr().out
    files = {r: tmp_path / 'out' / 'seed0' / f'{r}.json' for r in b.ROLES}
    for r, f in files.items():
        rec = json.loads(f.read_text())
        assert rec['stop']['reason'] == 'max_epochs' and rec['stop']['epoch'] == 2 and rec['train_cpu_s'] > 0
        assert rec['pretrained'] == ['rgb', 'flow', 'audio']
        assert set(rec['subsets']) == {'+'.join(s) for s in SUBSETS} and 'p0.9' in rec
        assert math.isclose(rec['missing'], np.mean([v for k, v in rec['subsets'].items() if k != 'rgb+flow+audio']))
        a = rec['subsets']                       # the exact drop curve: everything kept at p = 0; at 0.5 by hand (1/8 each, + 1/24 to singles)
        assert math.isclose(rec['e0.0'], a['rgb+flow+audio'])
        assert math.isclose(rec['e0.5'], sum(a.values()) / 8 + (a['rgb'] + a['flow'] + a['audio']) / 24)
    assert 'student - dropout_only' in out and 'seeds needed' in out
    d = recs[0]['student']['all'] - recs[0]['dropout_only']['all']
    assert f'{d:.1f}' in out.split('student - dropout_only')[1].split('\n')[0]
    mtimes = {r: f.stat().st_mtime_ns for r, f in files.items()}
    again = b.main(args + ['--figure', str(tmp_path / 'fig' / 'k')])
    assert 'stopped after epoch' not in capsys.readouterr().out            # nothing trained again
    assert {r: f.stat().st_mtime_ns for r, f in files.items()} == mtimes and again == recs
    md = (tmp_path / 'fig' / 'k.md').read_text()
    e = recs[0]['student']['e0.3'] - recs[0]['dropout_only']['e0.3']
    assert (tmp_path / 'fig' / 'k.png').stat().st_size > 0 and f'{e:+.1f}' in md.split('| student − dropout_only | exact expectation |')[1].split('\n')[0]


def test_papermill_world_tiny(tmp_path):
    import os
    env = dict(os.environ, M2DF_CACHE=str(tmp_path / 'cache'))
    args = ['-p', 'dataset', 'world', '-p', 'world_videos', '5', '-p', 'pool_clips', '40', '-p', 'pretrain_epochs', '1',
            '-p', 'teacher_epochs', '2', '-p', 'student_epochs', '2', '-p', 'run_dir', str(tmp_path / 'run'),
            '-p', 'figures_dir', str(tmp_path / 'fig')]
    r = subprocess.run([sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / 'karmma.ipynb'), str(tmp_path / 'x.ipynb'), *args,
                        '--cwd', str(ROOT / 'nbs')], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (tmp_path / 'fig' / 'karmma_subsets_world.md').read_text()
    assert 'V+F+A' in md
    out = (tmp_path / 'x.ipynb').read_text()
    assert 'held-out pool accuracy' in out
    rec = json.loads((tmp_path / 'run' / 'teacher_extractors.json').read_text())
    assert rec['extractors']['flow']['targets'] == {'motion': 8} and rec['extractors']['rgb']['clips'] == 32   # 40 less the fifth held out
    assert set(json.loads((tmp_path / 'run' / 'student_extractors.json').read_text())['extractors']) == {'rgb', 'flow', 'audio'}
    for role in ('student', 'ce_only', 'dropout_only'):
        c = json.loads((tmp_path / 'run' / role / 'config.json').read_text())
        assert Path(c['extractor_checkpoint']).name == 'student_extractors.pt' and c['checkpoint_modalities'] is None
    for role in ('teacher', 'student', 'ce_only', 'dropout_only'):
        assert json.loads((tmp_path / 'run' / role / 'result.json').read_text())['stop']['reason'] == 'max_epochs'

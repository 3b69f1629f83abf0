"""The `reference` preset runs the authors' protocol outside the head: their frame sampling, their flip on every benchmark
(SSv2 included), one-way OTAM where their Kinetics-100 1-shot yaml asks for it, float32, and the learning rate and
length of their main script; `reference_fixed` keeps their protocol and corrects what is a mistake.

The fixtures are computed from the authors' release (cofly2014/CLIP-MDMF, the `MDMF_CLIPFSAR` code at commit c6ac856) by
scripts kept outside this repository; they execute the authors' own functions, taken from their files with `ast`:

- `reference_frame_sampling.json`: `VideoDataset.get_seq` of `video_reader.py` (lines 292–334) run as it is on a
  stand-in dataset whose video of n frames has frame 'paths' 0..n−1 (no transform), so the images it returns are the
  sampled indices; its `random.randint` is replaced by a replay that enumerates every value each call can return
  (depth-first), so every case lists all outcomes, each with its draws `[a, b, value]` in call order. Cases: T = 8 at
  n = 8, 9, 10, 11, 12, 13, 17, 18, 19, 20, 40, 300; T = 16 at n = 16, 17, 18, 19, 20, 26, 27, 40, 300; T = 1 at n = 1, 2,
  3, 12; training and test mode each (654 outcomes in all).
- `reference_protocol.json`: the `add_argument` defaults of `run_clip_fsar_decison_now.py` (the main script) and of
  `run_clip_fsar_decison_now_statics.py`, read with `ast`; the transforms `VideoDataset.setup_transforms` builds at
  img_size 224 (executed with stand-in transform classes that record their names) and `RandomHorizontalFlip.__call__`
  (`videotransforms/video_transforms.py`) executed on a 3-frame clip with `random.random` returning 0.4999 and then 0.5;
  for every yaml of `configs/projects/CLIPFSAR/<benchmark>/` (its `_BASE` merged under it) its `TRAIN.SINGLE_DIRECT`
  and the output of `MDMF_CLIPFSAR.otam_distance` (executed from the model file with its `cos_sim` and
  `OTAM_cum_dist_v2`, `self.args` = that yaml) on fixed float32 features: 3 queries and 5 prototypes of T = 8 frames,
  D = 16, numpy `default_rng(0).standard_normal`.

The README's table "Where the authors' code differs from the paper" (also in `nbs/00_config.ipynb`) cites file:line of
the release: every cited line was checked against the release at c6ac856 by a script kept outside the repository (each
citation paired with a piece of the text its line must hold). The tests below check that the table's values under the
three presets are the presets' own and that the README and the notebook carry the same table.
"""
import json
from pathlib import Path
import numpy as np, pytest, torch

import m2df.video as V
from m2df.config import M2DFConfig, make_config
from m2df.episodes import clip_transform, episode_loader
from m2df.matching import otam_distance
from m2df.video import ClipTransform, sample_indices

FIX = Path(__file__).parent / 'fixtures'
SAMPLING = json.loads((FIX / 'reference_frame_sampling.json').read_text())
PROTOCOL = json.loads((FIX / 'reference_protocol.json').read_text())
BENCHMARKS = ('ucf101', 'hmdb51', 'kinetics100', 'ssv2_small', 'ssv2_full')
YAML = dict(ucf101='ucf101/CLIPFSAR_UCF101_{}shot_v1.yaml', hmdb51='hmdb51/CLIPFSAR_HMDB51_{}shot_v1.yaml',
            kinetics100='kinetics100/CLIPFSAR_K100_{}shot_v1.yaml', ssv2_small='ssv2_small/CLIPFSAR_SSv2_Small_{}shot_v1.yaml',
            ssv2_full='ssv2_full/CLIPFSAR_SSv2_Full_{}shot_v1.yaml')
MAIN, STATICS = PROTOCOL['scripts']['run_clip_fsar_decison_now.py'], PROTOCOL['scripts']['run_clip_fsar_decison_now_statics.py']


class Replay:
    "A numpy-Generator stand-in replaying the authors' `random.randint(a, b)` draws: `integers(a, b + 1)` must be asked."
    def __init__(self, draws): self.draws = [tuple(d) for d in draws]
    def integers(self, lo, hi):
        assert self.draws, f'm2df draws more than the authors ({lo}, {hi})'
        a, b, v = self.draws.pop(0)
        assert (lo, hi) == (a, b + 1), f'm2df draws from [{lo}, {hi}), the authors from [{a}, {b}]'
        return v
    def random(self): raise AssertionError('no other randomness expected')


@pytest.mark.parametrize('ds', BENCHMARKS)
def test_reference_frame_indices_equal_the_authors_reader(ds):
    cfg = make_config(ds, 'reference')
    n_outcomes = 0
    for case in SAMPLING['cases']:
        for out in case['outcomes']:
            rng = Replay(out['draws'])
            got = sample_indices(case['n'], case['T'], case['train'], rng, scheme=cfg.frame_sampling)
            assert got.tolist() == out['indices'], (case['T'], case['n'], case['train'], out)
            assert not rng.draws, f"m2df drew fewer than the authors: {case['T'], case['n'], case['train']}"
            n_outcomes += 1
    assert n_outcomes == 654
    # a clip shorter than T: the authors' reader leaves it out; m2df refuses it by name (the data check lists it)
    with pytest.raises(ValueError, match='fewer than the T=8'): sample_indices(7, 8, True, scheme=cfg.frame_sampling)


def test_reference_jitter_covers_exactly_the_authors_range():
    "At L = 300, T = 8 the two ends take every value in 0..5 and 294..299 (36 outcomes), interior frames move with them."
    case = next(c for c in SAMPLING['cases'] if (c['T'], c['n'], c['train']) == (8, 300, True))
    starts = sorted({o['draws'][0][2] for o in case['outcomes']}); ends = sorted({o['draws'][1][2] for o in case['outcomes']})
    assert (starts, ends, len(case['outcomes'])) == (list(range(6)), list(range(294, 300)), 36)
    rng = np.random.default_rng(0)
    draws = np.stack([sample_indices(300, 8, True, rng, 'reference') for _ in range(3000)])
    assert sorted(set(draws[:, 0])) == starts and sorted(set(draws[:, -1])) == ends
    allowed = {tuple(o['indices']) for o in case['outcomes']}
    assert {tuple(d) for d in draws} <= allowed and len({tuple(d) for d in draws}) == 36
    # m2df's own sampling is another scheme: its evaluation frames are the segment centres, not linspace(1, 298)
    test = next(c for c in SAMPLING['cases'] if (c['T'], c['n'], c['train']) == (8, 300, False))
    assert sample_indices(300, 8, False).tolist() != test['outcomes'][0]['indices']
    assert sample_indices(300, 8, False, scheme=make_config('ucf101', 'paper').frame_sampling).tolist() == \
        [18, 55, 93, 130, 168, 205, 243, 280]


@pytest.mark.parametrize('preset,want', [('reference', 'reference'), ('reference_fixed', 'reference'), ('paper', 'segments')])
def test_episode_loader_samples_with_the_configs_scheme(monkeypatch, preset, want):
    "The training and evaluation episodes decode the frames the config's scheme picks (the field is not dead)."
    seen = []
    real = V.sample_indices
    def spy(n, T, train, rng=None, scheme='segments'):
        seen.append(scheme); return real(n, T, train, rng, scheme)
    monkeypatch.setattr(V, 'sample_indices', spy)
    cfg = make_config('synthetic', preset, frames=4, num_workers=0, resize=64, crop=56, backbone='m2df-tiny-rn')
    for split in ('train', 'test'):
        next(iter(episode_loader(cfg, split, 1)))
    assert seen and set(seen) == {want}


@pytest.mark.parametrize('ds', BENCHMARKS)
def test_flip_follows_the_authors_on_every_benchmark(ds):
    "Their train transform flips every benchmark (SSv2 too) with p = 1/2, the whole clip at once; never in evaluation."
    assert PROTOCOL['flip']['train'] == ['Resize', 'RandomHorizontalFlip', 'RandomCrop']
    assert 'RandomHorizontalFlip' not in PROTOCOL['flip']['test']
    ssv2 = ds.startswith('ssv2')
    for preset, want in (('reference', True), ('reference_fixed', not ssv2), ('paper', not ssv2)):
        cfg = make_config(ds, preset)
        assert clip_transform(cfg, train=True).flip is want, (ds, preset)
        assert clip_transform(cfg, train=False).flip is want          # ... but evaluation never applies it:
    tf_eval = clip_transform(make_config(ds, 'reference'), train=False)
    frames = np.tile(np.arange(8, dtype=np.uint8)[None, None, :, None] * 30, (3, 8, 1, 3))   # a left-to-right ramp
    x = tf_eval(frames)
    assert (x[..., 0] < x[..., -1]).all()
    # training: a draw below 1/2 flips every frame, the draw 1/2 flips none (their `random.random() < 0.5`)
    tf = clip_transform(make_config(ds, 'reference'), train=True)
    tf = ClipTransform(True, resize=8, crop=8, flip=tf.flip, normalize=False)
    for v, key in ((0.4999, 'random_0.4999'), (0.5, 'random_0.5')):
        class R:
            def integers(self, lo, hi): return lo
            def random(self): return v
        y = tf(frames, R())
        flipped = [bool((f[..., 0] > f[..., -1]).all()) for f in y]
        assert flipped == PROTOCOL['flip'][key], (ds, v)


@pytest.mark.parametrize('ds', BENCHMARKS)
@pytest.mark.parametrize('shot', (1, 5))
def test_otam_direction_follows_each_benchmark_yaml(ds, shot):
    "Kinetics-100 1-shot (SINGLE_DIRECT: true) matches query→class only; every other yaml both ways, as `reference`."
    fx = PROTOCOL['otam']['yaml'][f'configs/projects/CLIPFSAR/{YAML[ds].format(shot)}']
    assert fx['single_direct'] is ((ds, shot) == ('kinetics100', 1))
    q, s = (torch.tensor(PROTOCOL['otam'][k]) for k in ('query', 'prototypes'))
    cfg = make_config(ds, 'reference', shot=shot)
    got = otam_distance(q, s, lam=cfg.otam_lambda, bidirectional=cfg.otam_bidirectional, variant=cfg.otam_variant,
                        eps=cfg.cos_eps)
    torch.testing.assert_close(got, torch.tensor(fx['distances']), atol=1e-5, rtol=0)
    assert make_config(ds, 'reference_fixed', shot=shot).otam_bidirectional is True


def test_reference_follows_the_main_scripts_lr_length_and_precision():
    "lr and training episodes: the main script's argparse defaults; fp32 (neither script autocasts)."
    for ds in BENCHMARKS:
        for preset in ('reference', 'reference_fixed'):
            cfg = make_config(ds, preset)
            assert (cfg.lr, cfg.episodes, cfg.accumulation) == (MAIN['learning_rate'], MAIN['training_iterations'],
                                                               MAIN['tasks_per_batch'])
            assert cfg.amp is False
    assert (STATICS['learning_rate'], STATICS['training_iterations']) == (1e-5, 45_020)   # the one `reference` does not follow
    paper = make_config('ucf101')
    assert (paper.lr, paper.episodes, paper.amp) == (1e-5, 10_000, True)


def test_reference_distillation_follows_the_statics_script():
    "Condition and direction: the `_statics` script's defaults (t and v comparisons, both ways), not the main script's."
    cond = {(1, 1): 'tv', (1, 0): 't', (0, 1): 'v', (0, 0): 'none'}
    direction = {'bid': 'both', 'up2down': 'g2l', 'down2up': 'l2g'}
    for ds in BENCHMARKS:
        cfg = make_config(ds, 'reference')
        assert (cfg.distill_condition, cfg.distill_direction) == (cond[tuple(STATICS['dist_condition'])],
                                                                  direction[STATICS['dist_direction']]) == ('tv', 'both')
    assert (cond[tuple(MAIN['dist_condition'])], direction[MAIN['dist_direction']]) == ('t', 'g2l')


def audit_rows():
    "The rows of the README's table 'Where the authors' code differs from the paper', as lists of cells."
    text = (Path(__file__).parent.parent / 'README.md').read_text()
    sec = text.split("## Where the authors' code differs from the paper", 1)[1].split('\n## ', 1)[0]
    return [[c.strip() for c in l.strip().strip('|').split('|')] for l in sec.splitlines()
            if l.startswith('| ') and not l.startswith('| #')]


def test_audit_table_states_each_presets_value():
    "Every row naming one config field gives that field's value under `paper`, `reference` and `reference_fixed` exactly."
    rows = audit_rows()
    assert len(rows) == 21 and all(len(r) == 9 for r in rows)
    names = {f.name for f in M2DFConfig.__dataclass_fields__.values()}
    checked = 0
    for r in rows:
        field = r[4].split(' ')[0].strip('`,')
        if r[4].count('`') != 2 or field not in names: continue
        for preset, cell in zip(('paper', 'reference', 'reference_fixed'), r[5:8]):
            where = ('kinetics100', 1) if 'Kinetics-100 1-shot' in cell else ('ucf101', 1)
            want = getattr(make_config(where[0], preset, shot=where[1]), field)
            got = cell.split(' ')[0].strip('`:,')
            assert got == (str(want) if not isinstance(want, float) else got) and \
                (not isinstance(want, float) or float(got) == want), (r[0], field, preset, cell, want)
            checked += 1
    assert checked >= 3 * 13


def test_audit_table_is_the_same_in_the_readme_and_the_config_notebook():
    title = "## Where the authors' code differs from the paper"
    readme = (Path(__file__).parent.parent / 'README.md').read_text().split(title, 1)[1].split('\n## ', 1)[0].strip()
    nb = json.loads((Path(__file__).parent.parent / 'nbs' / '00_config.ipynb').read_text())
    cells = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith(title)]
    assert len(cells) == 1 and cells[0].split(title, 1)[1].strip() == readme


def test_a_reference_run_says_which_mistakes_it_reproduces(tmp_path, capsys):
    "Said once when the run starts (stderr) and recorded in attempts.jsonl; a clean run records an empty list."
    from conftest import TINY
    from m2df.learner import Learner
    Learner(make_config('synthetic', 'reference', **TINY, num_workers=0), tmp_path / 'ref', progress=False)
    err = capsys.readouterr().err
    assert "reproduces the authors' mistakes" in err and err.count('normalize=False') == 1
    rec = [json.loads(l) for l in (tmp_path / 'ref' / 'attempts.jsonl').read_text().splitlines()]
    assert [m.split('=')[0] for m in rec[-1]['authors_mistakes']] == ['text_token', 'normalize', 'otam_variant']
    Learner(make_config('synthetic', **TINY, num_workers=0), tmp_path / 'paper', progress=False)
    assert "authors' mistakes" not in capsys.readouterr().err
    assert json.loads((tmp_path / 'paper' / 'attempts.jsonl').read_text().splitlines()[-1])['authors_mistakes'] == []


@pytest.mark.parametrize('scheme', ('reference', 'segments'))
def test_batched_evaluation_encodes_the_configs_frames(monkeypatch, scheme):
    "The cached evaluation (each video encoded once) decodes the frames of the config's scheme, under its own cache key."
    from conftest import tiny
    from m2df.evaluate import FeatureCache, evaluate, feature_key
    from m2df.model import M2DF
    cfg = tiny(frame_sampling=scheme, num_workers=0)
    torch.manual_seed(0)
    model = M2DF(cfg).eval()
    seen, real = [], V.sample_indices
    def spy(n, T, train, rng=None, scheme='segments'):
        seen.append((train, scheme)); return real(n, T, train, rng, scheme)
    monkeypatch.setattr(V, 'sample_indices', spy)
    evaluate(model, cfg, 'val', n_episodes=1, cache=FeatureCache())
    assert seen and set(seen) == {(False, scheme)}
    other = 'segments' if scheme == 'reference' else 'reference'
    assert feature_key(model, cfg, 'val') != feature_key(model, cfg.replace(frame_sampling=other), 'val')
    assert feature_key(model, cfg, 'val') != feature_key(model, cfg.replace(amp=False), 'val')   # float32 features


@pytest.mark.parametrize('ds', BENCHMARKS)
@pytest.mark.parametrize('shot', (1, 5))
def test_mistakes_flagged_per_benchmark_and_shot(ds, shot):
    "`reference` flags the SSv2 flip and the Kinetics-100 1-shot one-way OTAM where it has them; `reference_fixed` neither."
    from m2df.config import authors_mistakes
    flagged = {m.split('=')[0] for m in authors_mistakes(make_config(ds, 'reference', shot=shot))}
    assert flagged == {'text_token', 'normalize', 'otam_variant'} | ({'flip'} if ds.startswith('ssv2') else set()) \
        | ({'otam_bidirectional'} if (ds, shot) == ('kinetics100', 1) else set())
    fixed = {m.split('=')[0] for m in authors_mistakes(make_config(ds, 'reference_fixed', shot=shot))}
    assert fixed == {'text_token', 'normalize', 'otam_variant'}


def test_short_videos_are_listed_not_silently_dropped(tmp_path):
    """The authors' reader skips videos shorter than T without a word; under `reference` the data check lists each one and
    stops the run, and `drop_missing=True` leaves them out and records which."""
    from m2df.datacheck import DataCheckError, check_before_training
    from m2df.episodes import benchmark_data_root, benchmark_split
    from m2df.video import count_frames, resolve_video
    cfg = make_config('synthetic', 'reference', frames=20, check_workers=1)
    root = benchmark_data_root(cfg)
    short = {(s, r.path) for s in ('train', 'val', 'test') for r in benchmark_split(cfg, s).videos
             if count_frames(resolve_video(root, r.path)) < 20}
    assert short
    with pytest.raises(DataCheckError, match='fewer than T = 20'):
        check_before_training(cfg, tmp_path / 'stop', progress=False)
    check_before_training(cfg.replace(drop_missing=True), tmp_path / 'drop', progress=False)
    from m2df.datacheck import data_checks
    (rec,) = data_checks(tmp_path / 'drop')
    assert {(p['split'], p['video']) for p in rec['dropped']} == short and {p['kind'] for p in rec['dropped']} == {'short'}

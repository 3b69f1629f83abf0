"""The authors' protocol outside their head, against their own code: the class name each class is prompted with, when the
backbone's BatchNorm uses batch statistics, and when the test split is scored.

Fixtures (computed by scripts kept outside the repository, from cofly2014/CLIP-MDMF at commit c6ac856):
- `fixtures/reference_class_names.json`: for every benchmark, 1 and 5 shots, train and test, the name the authors' code
  prompts each class with. The script runs their `video_reader.Split` (`add_vid`, `get_unique_classes`) on the real
  split lists (the ones shipped in `m2df/data/splits`), adding videos in the order their `VideoDataset.read_dir` does (class
  folders of train+val+test sorted, numerically for SSv2-Full; ids = positions in that listing), and indexes the
  `TRAIN`/`TEST` `CLASS_NAME` list of their yaml config (`configs/projects/CLIPFSAR/<benchmark>/*_<shot>shot_v1.yaml`)
  by the class's position in `list(set(ids))`, as `MDMF_CLIPFSAR.forward` does (`own_names`: the yaml name that matches
  the class folder in letters and digits; SSv2-Full through the ids of the authors' `*_classnames.tsv`). Python 3.11.7.
- `fixtures/reference_bn_schedule.json`: the events of their `Learner.run` (run_clip_fsar_decison_now.py, with
  `train_task`, `test`, `prepare_task` unchanged) with tasks_per_batch=4, training_iterations=14, test_iters=[8, 12],
  2 test tasks, 5-way 1-shot, 5 training queries and 1 test query per class, 4 frames; the model stands in for theirs: a
  parent module in train mode holding a BatchNorm backbone put in eval mode when built (as their clip_model.py:569
  does), passing support and query frames through it separately (as their get_feats). Events: every backbone pass with
  the parent's and the BatchNorm's mode and its frame count, every optimiser step, every call of `test`.
"""
import json
from pathlib import Path

import pytest, torch

from conftest import real_splits_dir
from m2df.config import make_config
from m2df.splits import load_split

FIX = Path(__file__).parent / 'fixtures'
BENCHES = ('ucf101', 'hmdb51', 'kinetics100', 'ssv2_small', 'ssv2_full')


@pytest.fixture(scope='module')
def names_fixture():
    return json.loads((FIX / 'reference_class_names.json').read_text())


@pytest.fixture(scope='module')
def ssv2_labels(tmp_path_factory):
    "A something-something-v2-labels.json for the 100 SSv2-Full classes, from the authors' id -> name files (brackets dropped)."
    d = {}
    for split in ('train', 'test'):
        for line in (real_splits_dir() / 'ssv2_full' / f'{split}_classnames.tsv').read_text().splitlines():
            i, name = line.split('\t'); d[name.replace('[', '').replace(']', '')] = i
    for line in (real_splits_dir() / 'ssv2_full' / 'val.txt').read_text().splitlines():   # val ids: stand-in names
        i = line.split('/')[0]
        if i not in d.values(): d[f'Validation template {i}'] = i
    f = tmp_path_factory.mktemp('ssv2') / 'something-something-v2-labels.json'
    f.write_text(json.dumps(d))
    return f


@pytest.mark.parametrize('bench', BENCHES)
@pytest.mark.parametrize('shot', (1, 5))
def test_class_names_as_the_authors_loader_gives_them(names_fixture, ssv2_labels, bench, shot):
    "Under class_names='reference' every train and test class gets the name the authors' code prompts it with; under 'authors' its own yaml name; val keeps the clean names."
    fx = names_fixture['benchmarks'][bench][str(shot)]
    kw = dict(splits_dir=real_splits_dir() / bench, labels_json=ssv2_labels if bench == 'ssv2_full' else None, shot=shot)
    for split in ('train', 'test'):
        ref = load_split(bench, split, naming='reference', **kw)
        want = fx[split]['classes']
        assert sorted(ref.classes) == sorted(want)
        assert dict(zip(ref.classes, ref.class_names)) == want
        own = fx[split]['own_names']
        assert {k: (g, o) for k, g, o in ref.renamed} == {k: (want[k], own[k]) for k in want if want[k] != own[k]}
        fixed = load_split(bench, split, naming='authors', **kw)
        assert dict(zip(fixed.classes, fixed.class_names)) == own and fixed.renamed == []
    clean = load_split(bench, 'val', **kw)
    assert fx['val'] is None and load_split(bench, 'val', naming='reference', **kw).class_names == clean.class_names


def test_the_issue_examples(names_fixture):
    "HMDB51 test: all 10 classes renamed, 'run' prompted as 'fencing'; SSv2-Small 1-shot train: two swapped; 5-shot: all."
    hm = names_fixture['benchmarks']['hmdb51']['1']['test']
    assert hm['classes']['run'] == 'fencing' and sum(hm['classes'][k] != hm['own_names'][k] for k in hm['classes']) == 10
    sp = load_split('hmdb51', 'test', splits_dir=real_splits_dir() / 'hmdb51', naming='reference')
    assert sp.class_names[sp.classes.index('run')] == 'fencing' and len(sp.renamed) == 10
    counts = {s: len(load_split('ssv2_small', 'train', splits_dir=real_splits_dir() / 'ssv2_small', naming='reference', shot=s).renamed)
              for s in (1, 5)}
    assert counts == {1: 2, 5: 64}


# ---- BatchNorm schedule
def bn_events(cfg, tmp_path):
    "Train `cfg` with a hook on the backbone's first BatchNorm: ['pass', model.training, bn.training, frames], ['step'], ['test', episode]."
    from m2df.learner import Learner
    L = Learner(cfg, tmp_path / 'run', progress=False)
    events = []
    bn = next(m for m in L.model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    bn.register_forward_hook(lambda m, i, o: events.append(['pass', L.model.training, m.training, int(i[0].shape[0])]))
    step, score = L.opt.step, L.score_test
    L.opt.step = lambda *a, **k: (events.append(['step']), step(*a, **k))[1]
    L.score_test = lambda at: (events.append(['test', at]), score(at))[1]
    L.fit()
    return events, L


def schedule(events):
    "Per training pass: (optimiser steps before it, tests before it, BatchNorm in train mode, frames); per test: steps before it; modes of test passes."
    steps = tests = 0; train, test_at, test_modes, in_test = [], [], set(), False
    for e in events:
        if e[0] == 'step': steps += 1
        elif e[0] in ('test', 'test_begin'): test_at.append(steps); in_test = True
        elif e[0] == 'test_end': in_test = False; tests += 1
        elif e[0] == 'pass':
            if e[1] and not in_test: train.append((steps, tests, e[2], e[3]))
            else: test_modes.add(e[2])
    return train, test_at, test_modes


def m2df_schedule(events):
    "The m2df events with each test closed when the next training pass starts (m2df scores inside fit, between steps)."
    out, open_ = [], False
    for e in events:
        if e[0] == 'test': open_ = True; out.append(e); continue
        if open_ and e[0] == 'pass' and e[1]: out.append(['test_end']); open_ = False
        out.append(e)
    if open_: out.append(['test_end'])
    return schedule(out)


TINY_RN = dict(frames=4, fusion_ffn=64, shot=1, query=5, eval_query=1, accumulation=4, episodes=16, test_episodes=2,
               val_episodes=2, eval_chunk=1)


def test_bn_schedule_matches_the_authors_loop(tmp_path):
    "bn_mode='reference': running statistics until the first test scoring, batch statistics after it, support and queries in separate passes; the tests after the same optimiser steps as the authors' loop."
    fx = json.loads((FIX / 'reference_bn_schedule.json').read_text())
    a_train, a_test_at, a_test_modes = schedule(fx['events'])
    assert a_test_at == [2, 3] and a_test_modes == {False}                    # the fixture itself: two tests, eval mode
    cfg = make_config('synthetic', 'reference', test_at=(8, 12), **TINY_RN)  # 8 and 12 episodes = 2 and 3 steps of 4
    assert cfg.backbone == 'm2df-tiny-rn'
    events, _ = bn_events(cfg, tmp_path)
    m_train, m_test_at, m_test_modes = m2df_schedule(events)
    assert m_test_at == a_test_at and m_test_modes == a_test_modes
    mode = lambda rows: sorted({(tests, bn) for _, tests, bn, _ in rows})    # BatchNorm mode against tests done
    assert mode(m_train) == mode(a_train) == [(0, False), (1, True), (2, True)]
    pair = lambda rows: {tuple(r[3] for r in rows[i:i + 2]) for i in range(0, len(rows), 2)}   # passes of one episode
    assert pair(m_train) == pair(a_train) == {(20, 100)}                     # support (5x1x4 frames), then queries (5x5x4)
    switch = lambda rows: min(s for s, t, bn, _ in rows if bn)               # first step trained with batch statistics
    assert switch(m_train) == switch(a_train) == 2


def test_bn_modes_train_and_frozen(tmp_path):
    "bn_mode='train' (paper): batch statistics from the first step, support and queries in one pass; 'frozen' (reference_fixed): running statistics throughout."
    events, _ = bn_events(make_config('synthetic', 'paper', **{**TINY_RN, 'episodes': 8}, val_every=4), tmp_path / 'a')
    train, _, _ = schedule(events)
    assert {(bn, n) for _, _, bn, n in train} == {(True, 120)}
    events, _ = bn_events(make_config('synthetic', 'reference_fixed', test_at=(4, 8), **{**TINY_RN, 'episodes': 8}), tmp_path / 'b')
    train, test_at, modes = m2df_schedule(events)
    assert {bn for _, _, bn, _ in train} == {False} and test_at == [1, 2] and modes == {False}


# ---- model selection: test scored at fixed episodes, each result kept, no validation
@pytest.mark.parametrize('select', (True, False))
def test_test_at_scores_and_reports(tmp_path, select):
    "test_at: the test split is scored at each listed episode, every result kept (val.jsonl, test_<episode>.json); no validation; test.json reports the best (select_on_test) or the last."
    cfg = make_config('synthetic', 'reference', test_at=(4, 8, 12), select_on_test=select, **TINY_RN)
    events, L = bn_events(cfg, tmp_path)
    run = tmp_path / 'run'
    recs = [json.loads(l) for l in (run / 'val.jsonl').read_text().splitlines()]
    assert [(r['episode'], r['test_at'], 'val_accuracy' in r) for r in recs] == [(4, 4, False), (8, 8, False), (12, 12, False)]
    per = {e: json.loads((run / f'test_{e}.json').read_text()) for e in (4, 8, 12)}
    assert [per[e]['accuracy'] for e in (4, 8, 12)] == [r['test_accuracy'] for r in recs]
    test = json.loads((run / 'test.json').read_text())
    accs = [r['test_accuracy'] for r in recs]
    want = max(accs) if select else accs[-1]
    first = accs.index(want) if select else 2
    assert test['accuracy'] == want and test['episode'] == (4, 8, 12)[first]
    assert [s['accuracy'] for s in test['scorings']] == accs
    assert test['selected_on'].startswith('test: the best' if select else 'none: the last')
    assert [e[1] for e in events if e[0] == 'test'] == [4, 8, 12]           # the scorings, and nothing else scored
    assert not (run / 'test_16.json').exists()                               # the end of training is not scored again


def test_test_at_beyond_the_run_is_refused(tmp_path):
    from m2df.config import ConfigError
    from m2df.learner import Learner
    with pytest.raises(ConfigError, match='test_at'):
        Learner(make_config('synthetic', 'reference', test_at=(8, 40), **TINY_RN), tmp_path / 'run', progress=False)


# ---- the command line on an HMDB-shaped tree: which names the test classes are prompted with
@pytest.mark.parametrize('preset', ('reference', 'reference_fixed', 'paper'))
def test_command_line_prompts_hmdb_test_classes(tmp_path, tmp_path_factory, monkeypatch, preset):
    "`python -m m2df.learner dataset=hmdb51 preset=reference ...` prompts the HMDB51 test classes with the authors' (permuted) names, reference_fixed with their own, paper with the clean ones; the permutation is warned about and recorded."
    from test_real_path import TINY, build_root
    from m2df import learner
    from m2df.model import M2DF
    monkeypatch.setenv('M2DF_CACHE', str(tmp_path_factory.getbasetemp() / 'm2df-cache'))
    r = build_root('hmdb51', tmp_path / 'tree')
    seen = []
    orig = M2DF.class_text
    monkeypatch.setattr(M2DF, 'class_text', lambda self, names: (seen.append(list(names)), orig(self, names))[1])
    words = {**TINY, 'episodes': 2, 'test_at': 2} if preset != 'paper' else dict(TINY)
    argv = ['dataset=hmdb51', f'preset={preset}', f"data_root={r['data_root']}", f"splits_dir={r['splits_dir']}",
            f"run_dir={tmp_path / 'run'}", 'drop_missing=true', 'progress=false'] + [f'{k}={v}' for k, v in words.items()]
    with pytest.warns(UserWarning) if preset == 'reference' else _no_warning():
        learner.main(argv)
    classes = ['fencing', 'kick', 'kick_ball', 'pick', 'pour', 'pushup', 'run', 'sit', 'smoke', 'talk']
    fx = json.loads((FIX / 'reference_class_names.json').read_text())['benchmarks']['hmdb51']['1']['test']
    want = dict(reference=[fx['classes'][k] for k in classes], reference_fixed=[fx['own_names'][k] for k in classes],
                paper=[k.replace('_', ' ') for k in classes])[preset]
    test_lists = [n for n in seen if sorted(n) == sorted(want)]              # evaluate: every test class, in class order
    assert test_lists and all(n == want for n in test_lists)
    if preset == 'reference': assert want[classes.index('run')] == 'fencing'
    att = json.loads((tmp_path / 'run' / 'attempts.jsonl').read_text().splitlines()[0])
    assert len(att['class_names']['test']['renamed']) == (10 if preset == 'reference' else 0)


class _no_warning:
    "Context: no warning about class names is raised."
    def __enter__(self):
        import warnings
        self.cm = warnings.catch_warnings(record=True); self.w = self.cm.__enter__(); warnings.simplefilter('always')
    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        assert not [w for w in self.w if 'another class' in str(w.message)]


# ---- tables: the paper, reference and reference_fixed presets side by side on the same test episodes
def test_tables_put_the_presets_side_by_side(tmp_path, tmp_path_factory, monkeypatch):
    "The preset ablation table holds paper, reference and reference_fixed, each paired to the full model on the same fixed test episodes; a budget run moves the authors' scoring points to the same fractions of its length."
    from m2df.artifacts import ablation_markdown, grid_configs, infer_variant, run_grid
    monkeypatch.setenv('M2DF_CACHE', str(tmp_path_factory.getbasetemp() / 'm2df-cache'))
    cfgs = grid_configs(['synthetic'], [1], ['full', 'reference', 'reference_fixed'], episodes=8, test_episodes=6,
                        val_every=8, val_episodes=2, frames=4, fusion_ffn=64)
    assert [(infer_variant(c), c.test_at) for c in cfgs] == [('full', ()), ('reference', (6, 7, 8)), ('reference_fixed', (6, 7, 8))]
    runs = run_grid(cfgs, tmp_path / 'runs', log=lambda *a: None)
    assert sorted(runs.variant) == ['full', 'reference', 'reference_fixed']
    assert {len(a) for a in runs.episode_accuracy} == {6}                     # every run scored on the 6 fixed test episodes
    md = ablation_markdown(runs)
    for label in ('paper preset (full model)', "reference preset (authors' code)", "reference preset, the authors' mistakes fixed"):
        assert label in md
    assert md.count('(Δ ') >= 2                                                # both reference rows paired to the full model
    sel = dict(zip(runs.variant, runs.selected_on))
    assert sel['full'] == 'val' and sel['reference'].startswith('test: the best') and sel['reference_fixed'].startswith('none: the last')

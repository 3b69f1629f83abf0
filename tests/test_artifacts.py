"Tests of m2df.artifacts: run reuse and locking, the papermill driver, collection, paired scoring, published data, packaging."
import json, os, subprocess, sys, zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import m2df.artifacts as art
from m2df.artifacts import (VARIANTS, CPU_BUDGET, ensure_run, run_path, run_grid, collect_runs, load_run, find_runs,
                            paired_to_reference, load_published, train_notebook_parameters, notebook_parameters,
                            ablation_frame, main_tables, load_run_model, episode_embeddings, budget_overrides, infer_variant,
                            config_with, CONFIG_FIELDS, grid_configs, seed_summary, describe_runs, driver_dirs)
from m2df.config import make_config
from m2df.evaluate import mean_ci95, evaluate

REPO = Path(__file__).resolve().parents[1]
TRAIN_NB = REPO / 'nbs' / 'train.ipynb'

def tiny_cfg(**kw):
    "A run that trains in seconds: 4 frames, 2 optimiser steps of 2 episodes, 6 test episodes."
    return make_config('synthetic', **{**dict(frames=4, fusion_ffn=64, accumulation=2, episodes=4, val_every=4, val_episodes=4,
                                              test_episodes=6), **kw})

def fake_run(root, variant, acc, seed=2024, train_seed=0, dataset='synthetic', **kw):
    "A run folder with the records the learner writes, for collection tests (no training); `seed` is the evaluation seed."
    cfg = VARIANTS[variant].config(dataset, eval_seed=seed, seed=train_seed, **{**CPU_BUDGET['synthetic'], **kw})
    d = run_path(root, cfg); d.mkdir(parents=True)
    (d / 'config.json').write_text(json.dumps(cfg.to_dict()))
    m, h = mean_ci95(acc)
    (d / 'test.json').write_text(json.dumps(dict(split='test', episodes=len(acc), way=5, shot=cfg.shot, query=1, seed=seed,
                                                 accuracy=100 * m, ci95=100 * h, episode_accuracy=list(map(float, acc)),
                                                 per_class={})))
    return d

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "One tiny run trained through the package."
    root = tmp_path_factory.mktemp('runs')
    cfg = tiny_cfg()
    d = ensure_run(cfg, run_path(root, cfg))
    return cfg, d

# --- running and reuse

def test_ensure_run_trains_then_reuses(trained):
    cfg, d = trained
    assert (d / 'test.json').exists() and (d / 'checkpoints' / 'best.pt').exists()
    before = {f: (d / f).stat().st_mtime_ns for f in ('test.json', 'metrics.csv', 'config.json')}
    assert ensure_run(cfg.replace(device='cpu', num_workers=0), d) == d        # neutral fields: the same run
    assert {f: (d / f).stat().st_mtime_ns for f in before} == before           # nothing retrained or rewritten
    assert len((d / 'metrics.csv').read_text().splitlines()) == 1 + 2          # header + 2 optimiser steps

def test_ensure_run_refuses_another_config(trained):
    cfg, d = trained
    with pytest.raises(ValueError, match="lam: run 1.0, asked 0.5"):
        ensure_run(cfg.replace(lam=0.5), d)

def test_ensure_run_collect_only(tmp_path):
    cfg = tiny_cfg()
    with pytest.raises(FileNotFoundError, match='no finished run'):
        ensure_run(cfg, run_path(tmp_path, cfg), train=False)
    with pytest.warns(UserWarning, match='no finished run'):
        df = run_grid([cfg], tmp_path, train=False, log=lambda *_: None)
    assert df.empty
    with pytest.raises(ValueError, match='driver'):
        ensure_run(cfg, run_path(tmp_path, cfg), driver='slurm')

def test_rerun_retrains(tmp_path):
    cfg = tiny_cfg(episodes=2, val_every=2)
    d = ensure_run(cfg, run_path(tmp_path, cfg))
    t0 = (d / 'test.json').stat().st_mtime_ns
    (d / 'marker').write_text('old run')
    ensure_run(cfg, d, rerun=True)
    assert not (d / 'marker').exists() and (d / 'test.json').stat().st_mtime_ns != t0

def test_concurrent_requests_train_once(tmp_path):
    "Two processes asking for the same run at once: one trains, the other waits and reuses it."
    code = ('import sys; from m2df.config import make_config; from m2df.artifacts import ensure_run, run_path\n'
            "cfg = make_config('synthetic', frames=4, fusion_ffn=64, accumulation=2, episodes=4, val_every=4, "
            "val_episodes=4, test_episodes=6)\n"
            'ensure_run(cfg, run_path(sys.argv[1], cfg))\n')
    procs = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    (d,) = find_runs(tmp_path)
    assert len((d / 'metrics.csv').read_text().splitlines()) == 1 + 2     # trained once, not twice or resumed
    assert not list(d.glob('env-resumed-*.json'))

def test_loaded_model_reproduces_its_test_score(trained):
    cfg, d = trained
    model, c = load_run_model(d)
    assert c.pretrained is None and not model.training
    r = evaluate(model, c, 'test')
    assert r['episode_accuracy'] == json.loads((d / 'test.json').read_text())['episode_accuracy']

def test_episode_embeddings_of_a_trained_run(trained):
    cfg, d = trained
    model, c = load_run_model(d)
    emb, acc = episode_embeddings(model, c, index=1, shot=2, query=3)
    assert set(emb.representation) == {'CLIP frames', 'LTCE view', 'GTCE view'}
    assert emb.groupby('representation').size().eq(5 * 2 + 5 * 3 + 5).all()
    v = np.stack(emb.vector)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert emb[emb.role == 'query'].groupby(['representation', 'class']).size().eq(3).all()

# --- the papermill driver

DRIVERS = ('train', 'evaluate', 'tables', 'tsne', 'lambda_sweep')

def test_train_notebook_takes_every_variant():
    "Every variant's config maps onto parameters of nbs/train.ipynb: its changed config fields, under their own names."
    assert set(notebook_parameters(TRAIN_NB)) == {'dataset', 'preset', 'run_dir', 'restart'}   # config fields are not declared
    for v in VARIANTS.values():
        cfg = v.config('synthetic', **budget_overrides('synthetic', lam=0.5, gtce_kernel=5, flip=True))
        p = train_notebook_parameters(cfg, v.preset)
        assert config_with(p.pop('dataset'), p.pop('preset'), p) == cfg

@pytest.mark.parametrize('name', DRIVERS)
def test_driver_declares_only_its_own_parameters(name):
    "A driver's parameters cell declares no config field other than dataset/shot (a declared default could not be told from a given value)."
    own = set(notebook_parameters(REPO / 'nbs' / f'{name}.ipynb'))
    assert not own & (set(CONFIG_FIELDS) - {'dataset', 'shot'}), own & set(CONFIG_FIELDS)
    src = (REPO / 'nbs' / f'{name}.ipynb').read_text()
    assert '_before = set(globals())' in src and 'notebook_overrides(globals(), _before' in src

@pytest.mark.parametrize('name', DRIVERS)
def test_driver_refuses_an_unknown_parameter(tmp_path, name, monkeypatch):
    "papermill only warns about a name the notebook does not declare; the driver itself stops, naming it."
    import papermill as pm
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    bad = dict(epsiodes=3, dataset='ucf101', data_root=str(tmp_path / 'none'), checkpoint=str(tmp_path / 'none.pt'))
    with pytest.raises(pm.PapermillExecutionError) as e:   # without the check, these fail fast too, but otherwise
        pm.execute_notebook(str(REPO / 'nbs' / f'{name}.ipynb'), str(tmp_path / 'out.ipynb'), cwd=str(tmp_path),
                            parameters=bad, progress_bar=False)
    assert e.value.ename == 'ValueError'
    assert f"{name}.ipynb: unknown parameter 'epsiodes' (did you mean 'episodes'?)" in e.value.evalue
    assert not list(tmp_path.rglob('*.pt'))

def test_papermill_driver(tmp_path):
    cfg = make_config('synthetic', lam=0.5, frames=4, accumulation=2, episodes=2, val_every=2, val_episodes=4, test_episodes=6)
    d = ensure_run(cfg, run_path(tmp_path, cfg), driver='papermill')   # every changed field is a train notebook parameter
    executed = json.loads((d / 'train.ipynb').read_text())
    assert any('injected-parameters' in c['metadata'].get('tags', []) for c in executed['cells'])
    saved = json.loads((d / 'config.json').read_text())
    assert saved['lam'] == 0.5 and saved['episodes'] == 2 and saved['frames'] == 4
    assert load_run(d)['variant'] == 'full'

# --- collection and paired scoring

def test_load_run_names_missing_file(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(FileNotFoundError, match='test.json is missing'):
        load_run(tmp_path)

def test_pairs_only_runs_on_the_same_episodes(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 50).astype(float), rng.integers(0, 2, 50).astype(float)
    runs = collect_runs([fake_run(tmp_path, 'full', a), fake_run(tmp_path, 'no_pps', b),
                         fake_run(tmp_path, 'no_distill', b, seed=7)])            # other evaluation seed: other episodes
    p = paired_to_reference(runs).set_index('variant')
    assert np.isclose(p.loc['no_pps', 'delta'], 100 * (b - a).mean())
    assert np.isnan(p.loc['no_distill', 'delta'])                                 # no full-model run on its episodes

def test_ablation_tables_cover_every_group(tmp_path):
    rng = np.random.default_rng(2)
    runs = collect_runs([fake_run(tmp_path, v, rng.integers(0, 2, 30).astype(float)) for v in VARIANTS])
    ab = ablation_frame(runs)
    assert list(dict.fromkeys(ab.group)) == list(art.ABLATION_GROUPS)
    for g, t in ab.groupby('group'):
        assert t.setting.iloc[0].endswith('(full model)') and t.delta.iloc[0] == 0
    assert set(ab.variant) == set(VARIANTS) - {'clipfsar'}
    measured, pub, _, _ = main_tables(runs, load_published())
    assert len(measured) == 3 and pub.empty                  # no published numbers for the synthetic benchmark

def test_seed_summary_pairs_on_seeds_and_episodes(tmp_path):
    "Several training seeds: one row per setting, the mean over seeds, a CI that counts the seeds' spread, Δ paired on seed and episode."
    rng = np.random.default_rng(4)
    ep = rng.integers(0, 2, (3, 200)).astype(float)                       # 3 seeds × 200 episodes, the seeds far apart
    ep[1] = np.maximum(ep[1], rng.random(200) < .5); ep[2] = np.minimum(ep[2], rng.random(200) < .5)
    ep[:, :40] = 0; var = ep.copy(); var[:, :20] = 1                       # a variant right on 10% more episodes, every seed
    runs = collect_runs([fake_run(tmp_path, v, a[s], train_seed=s) for s in range(3) for v, a in (('full', ep), ('no_pps', var))])
    sm = seed_summary(runs).set_index('variant')
    assert sm.loc['full', 'seeds'] == (0, 1, 2) and np.isclose(sm.loc['full', 'accuracy'], 100 * ep.mean())
    one_run_ci = runs[(runs.variant == 'full')].ci95.mean()
    assert sm.loc['full', 'ci95'] > 2 * one_run_ci / np.sqrt(3)           # not the episodes-only interval of the pooled runs
    assert np.isclose(sm.loc['no_pps', 'delta'], 100 * (var - ep).mean()) and sm.loc['no_pps', 'resolved']
    assert sm.loc['no_pps', 'delta_ci95'] < sm.loc['full', 'ci95']         # the pairing removes the seeds' common spread
    shuffled = runs.copy()                                                 # pairing a variant's seed with another seed of
    m = shuffled.variant == 'no_pps'                                       # the full model is wrong: it would widen the CI
    shuffled.loc[m, 'seed'] = shuffled.loc[m, 'seed'].map({0: 1, 1: 2, 2: 0})
    assert seed_summary(shuffled).set_index('variant').loc['no_pps', 'delta_ci95'] > 2 * sm.loc['no_pps', 'delta_ci95']
    cap = describe_runs(runs)
    assert '2 settings × 3 training seeds (0, 1, 2) = 6 training runs' in cap and 'outside their 95% CI: PPS off' in cap, cap

def test_tables_driver_over_seeds_under_nbdev_test(tmp_path, monkeypatch):
    "The tables driver with two training seeds, under nbdev_test's IN_TEST: runs and figures in a temporary folder, figures/ untouched."
    import papermill as pm
    before = {p.name: p.stat().st_mtime_ns for p in (REPO / 'figures').iterdir()}
    monkeypatch.setenv('IN_TEST', '1'); monkeypatch.setenv('OMP_NUM_THREADS', '1')
    params = dict(seeds='[0, 1]', variants='full,no_pps', frames=4, fusion_ffn=64, accumulation=2, episodes=2, val_every=2,
                  val_episodes=2, test_episodes=6)
    out = tmp_path / 'tables.ipynb'
    pm.execute_notebook(str(REPO / 'nbs' / 'tables.ipynb'), str(out), parameters=params, cwd=str(REPO / 'nbs'), progress_bar=False)
    assert {p.name: p.stat().st_mtime_ns for p in (REPO / 'figures').iterdir()} == before
    text = out.read_text()
    assert '4 runs' in text and 'seeds [0, 1]' in text
    assert '2 settings × 2 training seeds (0, 1) = 4 training runs' in text
    printed = ''.join(t for c in json.loads(text)['cells'] for o in c.get('outputs', []) for t in o.get('text', []))
    scratch = Path(printed.split('figures in ')[1].split(';')[0]).parent
    assert scratch.name.startswith('m2df-driver-test-') and not scratch.exists()     # the temporary folder is gone

def test_infer_variant_of_a_train_notebook_run():
    assert infer_variant(make_config('hmdb51', 'no_pps', episodes=10).to_dict()) == 'no_pps'
    assert infer_variant(make_config('hmdb51', 'paper', distill_direction='g2l')) == 'dir_g2l'

# --- published numbers and packaging

PUBLISHED_HEADER = 'method,backbone,dataset,way,shot,accuracy,grade,source,note\n'

def test_published_numbers_are_sourced():
    "Every peer number on the five benchmarks, 1- and 5-shot, graded R (primary) or S (secondary), with its source."
    pub = load_published()
    assert len(pub) == 82 and pub.accuracy.between(0, 100).all() and set(pub.shot) == {1, 5}
    assert set(pub.dataset) == {'ucf101', 'hmdb51', 'kinetics100', 'ssv2_small', 'ssv2_full'} and set(pub.grade) == {'R', 'S'}
    assert (pub.source.str.len() > 10).all()
    assert not pub.duplicated(['method', 'backbone', 'dataset', 'way', 'shot']).any()
    key = pub.set_index(['method', 'backbone', 'dataset', 'shot'])
    assert key.loc[('TS-FSAR', 'CLIP ViT-B/16 (frozen) + ladder side network', 'ssv2_full', 1), 'accuracy'] == 75.1
    assert key.loc[('CLIP-FSAR', 'CLIP ViT-B/16', 'ssv2_full', 1), 'grade'] == 'R'       # also read in a maintainer's figure
    assert key.loc[('CLIP-FSAR', 'CLIP ViT-B/16', 'ssv2_full', 5), 'grade'] == 'S'
    assert '77,500' in key.loc[('CLIP-MEI', 'CLIP RN50', 'ssv2_full', 1), 'note']
    assert not pub.method.str.contains('M2DF|M²DF').any()             # the paper's own tables could not be read
    text = (REPO / 'm2df' / 'data' / 'published.csv').read_text()
    assert 'shared/' not in text and 'DESIGN' not in text and '../' not in text

def test_main_table_shows_published_numbers_apart_with_grades(tmp_path):
    "The published part carries the peers' numbers on the measured benchmarks and shots only, secondary ones marked (S)."
    rng = np.random.default_rng(3)
    runs = collect_runs([fake_run(tmp_path, v, rng.integers(0, 2, 20).astype(float), dataset='hmdb51', shot=5)
                         for v in ('full', 'clipfsar')])
    pub = load_published()
    measured, part, sources, notes = main_tables(runs, pub)
    want = pub[(pub.dataset == 'hmdb51') & (pub.shot == 5)]
    assert list(part.columns) == ['hmdb51 5-shot'] and len(part) == len(want) == 10
    cells = part['hmdb51 5-shot']
    assert cells['EMP-Net (CLIP ViT-B/16 (frozen))'].startswith('85.8 (S) [')            # secondary: marked
    assert cells['CLIP-SPM (CLIP ViT-B/16)'].startswith('88.6 [') and '(S)' not in cells['CLIP-SPM (CLIP ViT-B/16)']
    assert any('STRM' in n and '74' in n for n in notes)                                # the reported reproduction gap
    md = art.main_results_markdown(runs, pub)
    assert md.index('Measured here') < md.index('**Published**') and "CLIP-M²DF's own results" in md
    assert not set(part.index) & set(measured.index)                                    # never mixed with measured rows
    k100 = collect_runs([fake_run(tmp_path / 'k', v, rng.integers(0, 2, 20).astype(float), dataset='kinetics100', shot=5)
                         for v in ('full', 'clipfsar')])
    _, part, _, notes = main_tables(k100, pub)                                          # only the numbers of the same shot:
    assert len(part) == 8 and not any(i.startswith(('MoLo', 'CLIP-FSAR', 'LGA', 'EMP-Net')) for i in part.index)
    assert not any('MoLo' in n for n in notes)                                          # ... MoLo has only 1-shot numbers

def test_published_file_errors_name_row(tmp_path):
    f = tmp_path / 'p.csv'
    f.write_text(PUBLISHED_HEADER + 'X,RN50,ucf,5,1,50,R,paper,\n')
    with pytest.raises(ValueError, match=r"p.csv: data row 1 \(X, ucf\): unknown dataset 'ucf'"):
        load_published(f)
    f.write_text('method,dataset,way,shot,accuracy\nX,ucf101,5,1,50\n')
    with pytest.raises(ValueError, match='missing column'):
        load_published(f)
    f.write_text(PUBLISHED_HEADER + 'X,RN50,ucf101,5,1,150,R,paper,\n')
    with pytest.raises(ValueError, match='not a percentage'):
        load_published(f)
    f.write_text(PUBLISHED_HEADER + 'X,RN50,ucf101,5,1,50,P,paper,\n')
    with pytest.raises(ValueError, match="grade 'P' is not one of"):
        load_published(f)
    f.write_text(PUBLISHED_HEADER + 'X,RN50,ucf101,5,1,50,R,paper,\nX,RN50,ucf101,5,1,51,S,other,\n')
    with pytest.raises(ValueError, match='two numbers for X'):
        load_published(f)

def test_wheel_ships_the_data_file(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = tmp_path.glob('m2df-*.whl')
    names = zipfile.ZipFile(whl).namelist()
    assert 'm2df/data/published.csv' in names and 'm2df/artifacts.py' in names

def test_module_notebooks_stand_alone_and_show_their_figures():
    "Module notebooks are committed with their outputs: ten figures at least, each small, no machine path, no outside file."
    import json, re
    figures, heavy, leaks = 0, [], []
    for p in sorted((REPO / 'nbs').glob('[0-2][0-9]_*.ipynb')):
        nb = json.loads(p.read_text())
        for i, cell in enumerate(nb['cells']):
            text = ''.join(cell['source'])
            if 'shared/' in text or 'DESIGN' in text: leaks.append(f'{p.name} cell {i}: source')
            for out in cell.get('outputs', []):
                data = out.get('data', {})
                img = data.get('image/png') or data.get('image/jpeg')
                if img: figures += 1
                if img and len(img) > 400_000: heavy.append(f'{p.name} cell {i}: {len(img) // 1000} kB')
                s = json.dumps(out)
                if re.search(r'/work/|\.venv/|shared/|DESIGN|site-packages', s): leaks.append(f'{p.name} cell {i}: output')
    assert figures >= 10, f'only {figures} figures in the module notebooks: run them and commit their outputs'
    assert not heavy, f'figures over 400 kB: {heavy}'
    assert not leaks, f'references outside the repository: {leaks}'


def test_artifacts_exports_every_public_name_of_its_three_modules():
    "m2df.artifacts re-exports experiments, stats and report: its hand-kept list names every public name of theirs."
    import m2df.artifacts as a, m2df.experiments as e, m2df.stats as s, m2df.report as r
    missing = sorted((set(e.__all__) | set(s.__all__) | set(r.__all__)) - set(a.__all__))
    assert not missing, f'add {missing} to _all_ in nbs/15_artifacts.ipynb'

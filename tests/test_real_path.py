"""A researcher's first real-benchmark run, as the README describes it, on the real split lists of the five benchmarks.

Each data root is built in exactly the README's layout (`<data_root>/<class folder>/<video id>.<ext>`, one class of
frame folders `<data_root>/<class folder>/<video id>/00001.jpg`, SSv2-Full's labels file in its documented format), from
the real lists (every class, the first lines of each), with links to the synthetic clips as videos and one video of
the training list missing. The train, evaluate and tables notebooks then run on it through papermill with a tiny
backbone and random weights set by `-p` alone: the data check reports the missing video and the run goes on only with
`-p drop_missing True`."""
import json, os
from pathlib import Path

import pytest

from conftest import real_splits_dir
from m2df.config import make_config
from m2df.datacheck import check_data, data_checks, usable_split
from m2df.episodes import benchmark_split
from m2df.prepare import prepare_video
from m2df.splits import BENCHMARKS, SPLITS, SSV2_LABELS, class_key, parse_split_lines
from m2df.synthetic import synthetic_root

REPO = Path(__file__).resolve().parents[1]
BENCHES = ('ucf101', 'hmdb51', 'kinetics100', 'ssv2_small', 'ssv2_full')
EXT = dict(ucf101='.avi', hmdb51='.avi', kinetics100='.mp4', ssv2_small='.webm', ssv2_full='.webm')   # as the downloads
PER_CLASS = 3            # lines kept per class and split: K + Q = 2 in training and evaluation, one spare for the missing one
TINY = dict(backbone='m2df-tiny-vit', pretrained=None, frames=4, resize=64, crop=56, fusion_ffn=64, fusion_heads=4,
            query=1, episodes=2, accumulation=1, val_every=2, val_episodes=2, test_episodes=3)   # every one given by -p


def build_root(bench: str, base: Path) -> dict:
    "Lists (the first PER_CLASS lines of every class of the real lists), a data root in the README's layout, one missing video."
    b = BENCHMARKS[bench]
    clips = sorted((synthetic_root() / 'videos').rglob('*.mp4'))
    lists, root = base / 'lists' / bench, base / 'data' / bench
    lists.mkdir(parents=True); root.mkdir(parents=True)
    frames = base / 'frame-folder-source'
    if not frames.exists(): prepare_video(clips[0], frames, 'frames')            # one real folder of JPEG frames
    kept, n = {}, 0
    for split in SPLITS:
        src = real_splits_dir() / bench / f'{split}.txt'
        rows = parse_split_lines(src.read_text(), src, b.line_format)
        lines, count = [], {}
        for folder, rel, _ in rows:
            k = class_key(folder, b)
            if count.get(k, 0) < PER_CLASS: count[k] = count.get(k, 0) + 1; lines.append(rel)
        (lists / f'{split}.txt').write_text('\n'.join(lines) + '\n')
        kept[split] = lines
    frame_class = kept['train'][0].split('/')[0]
    made = {}
    for split, lines in kept.items():
        for rel in lines:
            folder, vid = rel.split('/')
            d = root / (folder.replace('_', ' ') if b.merge_spellings else folder)   # Kinetics folders as downloaded: spaces
            d.mkdir(exist_ok=True)
            if folder == frame_class: made[rel] = d / vid; made[rel].symlink_to(frames, target_is_directory=True)
            else: made[rel] = d / f'{vid}{EXT[bench]}'; made[rel].symlink_to(clips[n % len(clips)]); n += 1
    missing = next(r for r in kept['train'] if r.split('/')[0] != frame_class)
    made[missing].unlink()
    out = dict(bench=bench, data_root=str(root), splits_dir=str(base / 'lists'), missing=missing, frame_class=frame_class)
    if bench == 'ssv2_full':                                                    # the labels file, in its documented format
        ids = sorted({r.split('/')[0] for lines in kept.values() for r in lines}, key=int)
        labels = base / 'annotations' / SSV2_LABELS
        labels.parent.mkdir(exist_ok=True)
        labels.write_text(json.dumps({f'Template number {i} of something': str(i) for i in ids}))
        out['ssv2_labels'] = str(labels)
    return out


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp('real')
    return {b: build_root(b, base) for b in BENCHES}


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    "The data check's cache and everything else the kernels write to the m2df cache stay in a temporary folder."
    monkeypatch.setenv('M2DF_CACHE', str(tmp_path_factory.getbasetemp() / 'm2df-cache'))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')


def data_params(r: dict) -> dict:
    p = dict(dataset=r['bench'], data_root=r['data_root'], splits_dir=r['splits_dir'])
    if 'ssv2_labels' in r: p['ssv2_labels'] = r['ssv2_labels']
    return p


def papermill(nb: str, executed: Path, **params):
    "Run nbs/<nb>.ipynb with `params` (as `-p`), writing the executed notebook to `executed`."
    import papermill as pm
    return pm.execute_notebook(str(REPO / 'nbs' / f'{nb}.ipynb'), str(executed), parameters=params, cwd=str(executed.parent),
                               progress_bar=False)


@pytest.mark.parametrize('bench', BENCHES)
def test_data_check_finds_the_missing_video(roots, bench):
    r = roots[bench]
    rep = check_data(make_config(**data_params(r), frames=4), progress=False)
    assert [(p.split, p.video, p.kind) for p in rep.problems] == [('train', r['missing'], 'missing')], rep.summary()
    assert rep.videos['train'] == BENCHMARKS[bench].num_classes['train'] * PER_CLASS
    assert all(c[0] >= 4 for c in rep.frame_counts.values())
    cfg = make_config(**data_params(r), frames=4)
    full, kept = usable_split(cfg, 'train'), usable_split(cfg.replace(drop_missing=True), 'train')
    assert r['missing'] in {v.path for v in full.videos} and r['missing'] not in {v.path for v in kept.videos}
    assert len(full) - len(kept) == 1 and kept.classes == full.classes


def test_split_lists_are_read_before_the_weights(roots, tmp_path, monkeypatch):
    "Cheap checks first: a malformed split list stops the learner before any weights are loaded."
    import m2df.learner as L
    from m2df.splits import SplitError
    def no_model(*a, **k): raise AssertionError('the model (and its weights) was built before the split lists were read')
    monkeypatch.setattr(L, 'M2DF', no_model)
    r = roots['ucf101']
    lists = tmp_path / 'lists' / 'ucf101'; lists.mkdir(parents=True)
    for s in SPLITS: (lists / f'{s}.txt').write_text((Path(r['splits_dir']) / 'ucf101' / f'{s}.txt').read_text())
    (lists / 'test.txt').write_text((lists / 'test.txt').read_text() + 'no-class-folder\n')
    with pytest.raises(SplitError, match=r"test.txt, line \d+: expected <class folder>/<video id>"):
        L.Learner(make_config('ucf101', data_root=r['data_root'], splits_dir=str(tmp_path / 'lists')), tmp_path / 'run', progress=False)
    assert not (tmp_path / 'run').exists()


def test_ssv2_labels_errors_say_what_the_file_is(roots, tmp_path):
    r = roots['ssv2_full']
    for labels, where in ((str(tmp_path / 'nope.json'), "ssv2_labels='"), (None, 'It is not in any of')):
        with pytest.raises(FileNotFoundError) as e:
            benchmark_split(make_config('ssv2_full', data_root=r['data_root'], splits_dir=r['splits_dir'], ssv2_labels=labels), 'train')
        for part in (where, SSV2_LABELS, 'numeric Something-Something v2 label ids', BENCHMARKS['ssv2_full'].videos_url,
                     '-p ssv2_labels <file>', '"<action template>": "<id>"'):
            assert part in str(e.value), (part, str(e.value))
    sp = benchmark_split(make_config(**data_params(r)), 'train')
    assert sp.class_names[0].startswith('Template number')                     # the file passed as ssv2_labels is used


def test_command_line_shows_progress(monkeypatch):
    "python -m m2df.learner shows the notebooks' progress bars unless told progress=false."
    import m2df.learner as L
    seen = []
    class Spy:
        def __init__(self, cfg, run_dir, progress=True, **kw): seen.append((cfg.episodes, str(run_dir), progress))
        def fit(self, **kw): return {}
    monkeypatch.setattr(L, 'Learner', Spy)
    L.main(['dataset=synthetic', 'episodes=4', 'run_dir=/tmp/x'])
    L.main(['dataset=synthetic', 'progress=false', 'run_dir=/tmp/x'])
    assert seen == [(4, '/tmp/x', True), (200, '/tmp/x', False)]


def test_train_stops_with_the_report_without_drop_missing(roots, tmp_path):
    import papermill as pm
    r = roots['kinetics100']
    with pytest.raises(pm.PapermillExecutionError) as e:
        papermill('train', tmp_path / 'train.ipynb', **data_params(r), **TINY, run_dir=str(tmp_path / 'run'))
    assert e.value.ename == 'DataCheckError', e.value.ename
    for part in ('1 video(s) of the kinetics100 split lists cannot be used', f"missing: {r['missing']!r}",
                 'drop_missing=True', str(tmp_path / 'run' / 'data_check.jsonl')):
        assert part in e.value.evalue, (part, e.value.evalue)
    assert not (tmp_path / 'run' / 'checkpoints').exists()                      # stopped before the first episode
    (rec,) = data_checks(tmp_path / 'run')
    assert [p['video'] for p in rec['problems']] == [r['missing']] and rec['dropped'] == []


@pytest.mark.parametrize('bench', BENCHES)
def test_train_then_evaluate(roots, tmp_path, bench):
    "The train notebook on each benchmark, everything set by -p (tiny backbone, random weights, the missing video dropped), then the evaluate notebook on its checkpoint."
    r = roots[bench]
    run = tmp_path / 'run'
    papermill('train', tmp_path / 'train.ipynb', **data_params(r), **TINY, drop_missing=True, run_dir=str(run))
    cfg = json.loads((run / 'config.json').read_text())
    assert (cfg['dataset'], cfg['backbone'], cfg['pretrained'], cfg['frames'], cfg['drop_missing']) == (bench, 'm2df-tiny-vit', None, 4, True)
    (rec,) = data_checks(run)
    assert [(p['split'], p['video'], p['kind']) for p in rec['dropped']] == [('train', r['missing'], 'missing')]
    test = json.loads((run / 'test.json').read_text())
    assert test['episodes'] == 3 and 0 <= test['accuracy'] <= 100
    out = tmp_path / 'scores.json'
    papermill('evaluate', tmp_path / 'eval.ipynb', checkpoint=str(run / 'checkpoints' / 'best.pt'), test_episodes=5,
              data_root=r['data_root'], out=str(out))
    s = json.loads(out.read_text())
    assert (s['split'], s['episodes'], len(s['episode_accuracy'])) == ('test', 5, 5)


def test_tables_notebook_without_openai_weights(roots, tmp_path):
    "The tables notebook on the five benchmarks' layouts at once, no OpenAI weights: tiny backbone, random weights, by -p alone."
    figures, tag = tmp_path / 'figures', '+'.join(BENCHES)
    papermill('tables', tmp_path / 'tables.ipynb', **TINY, dataset=','.join(BENCHES), splits_dir=roots['ucf101']['splits_dir'],
              data_root={b: roots[b]['data_root'] for b in BENCHES}, ssv2_labels=roots['ssv2_full']['ssv2_labels'],
              drop_missing=True, shot=1, variants='full,clipfsar', runs_dir=str(tmp_path / 'runs'), figures_dir=str(figures))
    md = (figures / f'main_results_{tag}.md').read_text()
    assert 'CLIP-M²DF (full)' in md and 'm2df-tiny-vit' in md, md
    pps = (figures / f'pps_{tag}.md').read_text()              # one PPS row per benchmark, each with its own accuracy
    assert all(pps.count(f'| trained: CLIP-M²DF (full), {b} |') == 1 for b in BENCHES), pps
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / 'runs').glob('*/*/config.json'))]
    assert sorted(c['dataset'] for c in runs) == sorted(BENCHES * 2)
    assert all(c['pretrained'] is None and c['backbone'] == 'm2df-tiny-vit' for c in runs)

"""Runs that cannot be silently wrong: exact resumption after kill -9 (during a checkpoint write too), what a checkpoint
holds, a run that keeps its settings, a finished run left alone, every start recorded."""
import csv, json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from m2df.learner import Learner
from m2df.model import M2DF
from m2df.runs import load_checkpoint

from conftest import TINY, tiny

# 6 optimiser steps of 2 episodes; validations and checkpoints after steps 2, 4 and 6; the test split scored once
RUN = dict(episodes=12, accumulation=2, query=2, val_every=4, save_every=4, val_episodes=4, test_episodes=6)


def small(**kw): return tiny(**{**RUN, **kw})


def cli(**kw): return [f'{k}={v}' for k, v in {**TINY, **RUN, **kw}.items()]


def child_env(**kw):
    "Environment of a child process: offline, unbuffered, one OpenMP thread."
    return dict(os.environ, HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', **kw)


def untimed_rows(run: Path) -> list:
    "metrics.csv without its wall-clock column."
    with open(run / 'metrics.csv', newline='') as f: return [{k: v for k, v in r.items() if k != 'seconds'} for r in csv.DictReader(f)]


def logged_steps(run: Path) -> list:
    f = run / 'metrics.csv'
    if not f.exists(): return []
    return [int(l.split(',', 1)[0]) for l in f.read_text().splitlines(keepends=True)[1:] if l.endswith('\n')]


def same_tensors(a: dict, b: dict) -> bool:
    if a.keys() != b.keys(): return False
    return all(same_tensors(a[k], b[k]) if isinstance(a[k], dict) else
               (torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]) for k in a)


def test_killed_run_ends_bit_for_bit_where_the_uninterrupted_one_ends(tmp_path):
    """kill -9 three times (after a step, during a checkpoint write, at a moment chosen by the clock), then the same
    command: the finished run equals the uninterrupted one in every number it records."""
    straight = tmp_path / 'straight'
    Learner(small(), straight, progress=False).fit()                  # in this process: it must not matter either

    run = tmp_path / 'killed'
    args = [sys.executable, '-m', 'm2df.learner', *cli(num_workers=1), f'run_dir={run}']   # workers must not matter
    for point in ('step:3', 'save:last.pt:4'):          # M2DF_KILL_AT: the process kills itself there
        p = subprocess.run(args, cwd=tmp_path, env=child_env(M2DF_KILL_AT=point), capture_output=True, text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, (point, p.stdout[-2000:] + p.stderr[-3000:])
        if point.startswith('save'):                                      # the cut write left its temporary file
            assert list((run / 'checkpoints').glob('.*.tmp')), point
    # a kill from outside, at whatever the process is doing once step 5 is logged
    p = subprocess.Popen(args, cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while p.poll() is None and max(logged_steps(run), default=0) < 5 and time.time() < deadline: time.sleep(0.01)
    finally:
        p.kill(); p.wait(); p.stderr.close()
    done = subprocess.run(args, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    assert untimed_rows(run) == untimed_rows(straight), 'losses, accuracies or running accuracy differ'
    assert (run / 'val.jsonl').read_text() == (straight / 'val.jsonl').read_text()
    ta, tb = (json.loads((r / 'test.json').read_text()) for r in (straight, run))
    assert tb['episode_accuracy'] == ta['episode_accuracy'] and tb['per_class'] == ta['per_class']
    for name in ('last.pt', 'best.pt'):
        a, b = (load_checkpoint(r / 'checkpoints' / name) for r in (straight, run))
        assert same_tensors(a['model'], b['model']), f'{name}: the weights differ'
    a, b = (load_checkpoint(r / 'checkpoints' / 'last.pt') for r in (straight, run))
    assert same_tensors(a['optimizer']['state'], b['optimizer']['state'])
    ra, rb = (json.loads((r / 'result.json').read_text()) for r in (straight, run))
    drop = lambda r: {k: v for k, v in r.items() if k not in ('run_dir', 'start_step')}
    assert drop(ra) == drop(rb)                                           # the episode digests and the weights' digests too
    assert not list(run.rglob('.*.tmp')), 'a temporary file of a killed write was left behind'
    outcomes = [json.loads(l)['outcome'] for l in (run / 'attempts.jsonl').read_text().splitlines()]
    assert outcomes == ['started'] + ['resumed'] * 3


def test_checkpoints_hold_what_cannot_be_rebuilt(tmp_path):
    "Frozen towers from a weights file are left out (a digest refuses other frozen weights); best.pt has no optimiser."
    weights = tmp_path / 'tiny-weights.pt'
    torch.manual_seed(5)
    torch.save(M2DF(tiny()).backbone.clip.state_dict(), weights)
    cfg = small(pretrained=str(weights), episodes=4)
    lr = Learner(cfg, tmp_path / 'run', progress=False)
    lr.fit(test=False)
    last, best = (load_checkpoint(lr.run.ckpt_dir / n) for n in ('last.pt', 'best.pt'))
    frozen = [k for k in lr.model.state_dict() if k.startswith('backbone.clip.') and not k.startswith('backbone.clip.visual.')]
    assert frozen and any(k.startswith('backbone.clip.token_embedding') for k in frozen)
    for s in (last, best):
        assert not set(frozen) & set(s['model']) and not s['frozen_saved']
        assert any(k.startswith('backbone.clip.visual.') for k in s['model'])   # the fine-tuned tower is saved
    assert 'optimizer' in last and 'optimizer' not in best and 'scaler' not in best
    size = lambda n: (lr.run.ckpt_dir / n).stat().st_size
    text_bytes = sum(v.numel() * v.element_size() for k, v in lr.model.state_dict().items() if k in set(frozen))
    assert size('best.pt') < size('last.pt') and text_bytes > 0.5 * size('best.pt')   # the text tower dominated before

    from m2df.runs import frozen_keys, load_model_state
    assert frozen_keys(lr.model) == frozen
    same = M2DF(cfg)                                                       # rebuilt from the same file: loads
    load_model_state(same, best, 'best.pt')
    assert all(torch.equal(same.state_dict()[k], v) for k, v in best['model'].items())
    other = M2DF(cfg.replace(pretrained=None))                             # random frozen towers: refused, naming both digests
    with pytest.raises(ValueError, match=r'best.pt leaves out the frozen backbone weights .* differ .*digest'):
        load_model_state(other, best, 'best.pt')
    # random frozen towers cannot be rebuilt: they are saved
    r = Learner(small(episodes=2), tmp_path / 'random', progress=False); r.save(r.run.last)
    assert set(frozen) <= set(load_checkpoint(r.run.last)['model'])


def test_a_run_keeps_its_settings(tmp_path, capsys):
    "Resuming with lr=0.5 normalize=false was accepted and rewrote config.json; now it is refused and recorded."
    from m2df import learner as L
    run = tmp_path / 'run'
    Learner(small(episodes=4), run, progress=False).fit(test=False)
    config, env = (run / 'config.json').read_text(), (run / 'env.json').read_text()
    with pytest.raises(SystemExit) as e:
        L.main([*cli(episodes=4, lr=0.5, normalize='false'), f'run_dir={run}'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'normalize: True -> False' in err and 'lr: 0.001 -> 0.5' in err, err
    assert (run / 'config.json').read_text() == config and (run / 'env.json').read_text() == env
    with pytest.raises(ValueError, match="schedule: 'constant' -> 'cosine'"):
        Learner(small(episodes=4, schedule='cosine'), run, progress=False)
    # extending the run is allowed; config.json then says so; env.json stays the first start's record
    more = Learner(small(episodes=6), run, progress=False)
    assert more.step == 2 and more.changes == {'episodes': (4, 6)}
    assert json.loads((run / 'config.json').read_text())['episodes'] == 6 and (run / 'env.json').read_text() == env
    attempts = [json.loads(l) for l in (run / 'attempts.jsonl').read_text().splitlines()]
    assert [a['outcome'] for a in attempts] == ['started', 'refused', 'refused', 'resumed']
    assert 'lr: 0.001 -> 0.5' in attempts[1]['error'] and attempts[3]['changes'] == {'episodes': [4, 6]}


def test_a_finished_run_run_again_changes_nothing(tmp_path):
    run = tmp_path / 'run'
    Learner(small(episodes=4), run, progress=False).fit()
    files = {n: ((run / n).read_text(), (run / n).stat().st_mtime_ns) for n in ('test.json', 'result.json', 'metrics.csv')}
    again = Learner(small(episodes=4), run, progress=False)
    res = again.fit()
    assert again.start_step == again.step == 2
    assert {n: ((run / n).read_text(), (run / n).stat().st_mtime_ns) for n in files} == files, 'a finished run was rewritten'
    assert res['test'] == {k: json.loads(files['test.json'][0])[k] for k in ('accuracy', 'ci95', 'episodes')}
    Learner(small(episodes=4), run, progress=False).fit(rescore=True)      # asked for: scored again
    assert (run / 'test.json').stat().st_mtime_ns != files['test.json'][1]
    assert json.loads((run / 'test.json').read_text())['episode_accuracy'] == json.loads(files['test.json'][0])['episode_accuracy']


def test_stale_temporaries_are_removed_and_a_fresh_start_clears_the_old_run(tmp_path):
    run = tmp_path / 'run'
    Learner(small(episodes=4), run, progress=False).fit()
    strays = [run / 'checkpoints' / '.last.pt.x1.tmp', run / '.metrics.csv.x2.tmp']
    for f in strays: f.write_bytes(b'half a file')
    Learner(small(episodes=4), run, progress=False)
    assert not any(f.exists() for f in strays)
    fresh = Learner(small(episodes=4, lr=0.5), run, resume=False, progress=False)   # starting over: any settings
    assert fresh.step == 0 and not (run / 'checkpoints' / 'last.pt').exists() and not (run / 'test.json').exists()
    assert json.loads((run / 'config.json').read_text())['lr'] == 0.5

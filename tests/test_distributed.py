"Distributed data-parallel training under torchrun: two CPU processes (gloo) train a tiny run; rank 0 alone writes."
import csv, json, os, subprocess, sys
from pathlib import Path

import torch

from m2df.config import make_config
from m2df.evaluate import weights_digest
from m2df.model import M2DF
from m2df.runs import load_checkpoint

TINY = dict(backbone='m2df-tiny-vit', frames=4, fusion_ffn=64, accumulation=2, episodes=8, val_every=8, val_episodes=2, test_episodes=2, device='cpu')


def torchrun() -> list:
    "The torchrun of this interpreter's environment (or its module form)."
    exe = Path(sys.executable).with_name('torchrun')
    return [str(exe)] if exe.exists() else [sys.executable, '-m', 'torch.distributed.run']


def test_torchrun_two_ranks_on_cpu(tmp_path):
    run = tmp_path / 'run'
    cmd = [*torchrun(), '--standalone', '--nproc_per_node', '2', '-m', 'm2df.learner',
           *[f'{k}={v}' for k, v in TINY.items()], f'run_dir={run}']
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1')
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-4000:]

    res = json.loads((run / 'result.json').read_text())
    # accumulation 2 over 2 ranks: 1 episode per rank per step, 4 steps for 8 episodes
    assert (res['world'], res['steps'], res['episodes']) == (2, 4, 8)
    d = res['rank_episode_digests']
    assert len(d) == 2 and d[0] != d[1], 'the two ranks drew identical episodes'
    w = res['rank_weight_digests']
    assert len(w) == 2 and w[0] == w[1], 'the ranks ended with different weights'
    # the digest is the weights' digest: that of the final checkpoint, which differs from the initial weights
    cfg = make_config('synthetic', **TINY)
    torch.manual_seed(cfg.seed)
    model = M2DF(cfg)
    initial = weights_digest(model)
    state = load_checkpoint(run / 'checkpoints' / 'last.pt', cfg)
    assert (state['step'], state['world']) == (4, 2)
    model.load_state_dict(state['model'])
    assert weights_digest(model) == w[0] != initial

    # rank 0 alone writes: one row per step, one validation, one environment record
    with open(run / 'metrics.csv', newline='') as f: rows = list(csv.DictReader(f))
    assert [int(r['step']) for r in rows] == [1, 2, 3, 4]
    assert [int(r['episode']) for r in rows] == [2, 4, 6, 8]
    queries = 2 * cfg.way * cfg.query                                   # both ranks' queries of a step
    for r in rows:
        acc = float(r['acc'])
        assert 0 <= acc <= 100 and 0 <= float(r['running_acc']) <= 100
        assert abs(acc * queries / 100 - round(acc * queries / 100)) < 1e-6, f'acc {acc} is not k/{queries}'
    assert len((run / 'val.jsonl').read_text().splitlines()) == 1
    assert sorted(f.name for f in run.iterdir() if f.is_file()) == \
        ['.lock', 'attempts.jsonl', 'config.json', 'data.json', 'data_check.jsonl', 'env.json', 'metrics.csv', 'result.json',
         'test.json', 'val.jsonl']
    assert [json.loads(l)['outcome'] for l in (run / 'attempts.jsonl').read_text().splitlines()] == ['started']
    # each rank's chained episode digest is in the last checkpoint, so that a resumed run continues it
    assert state['episode_digests'] == d and 'optimizer' in state
    assert 'optimizer' not in load_checkpoint(run / 'checkpoints' / 'best.pt')
    assert json.loads((run / 'test.json').read_text())['episodes'] == 2


def test_torchrun_run_killed_and_resumed_ends_where_the_uninterrupted_one_ends(tmp_path):
    "Two ranks killed at step 3 (after the checkpoint of step 2), then the same command: every record equals the straight run's."
    kw = dict(TINY, save_every=4, val_every=4)                        # checkpoints and validations after steps 2 and 4
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1')
    cmd = lambda run: [*torchrun(), '--standalone', '--nproc_per_node', '2', '-m', 'm2df.learner',
                       *[f'{k}={v}' for k, v in kw.items()], f'run_dir={run}']
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    p = subprocess.run(cmd(straight), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-4000:]
    p = subprocess.run(cmd(killed), cwd=tmp_path, env=dict(env, M2DF_KILL_AT='step:3'), capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and not (killed / 'result.json').exists(), 'the ranks were not killed'
    assert load_checkpoint(killed / 'checkpoints' / 'last.pt')['step'] == 2
    p = subprocess.run(cmd(killed), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-4000:]

    untimed = lambda run: [{k: v for k, v in r.items() if k != 'seconds'} for r in csv.DictReader(open(run / 'metrics.csv', newline=''))]
    assert untimed(killed) == untimed(straight), 'losses, accuracies or running accuracy differ'
    assert (killed / 'val.jsonl').read_text() == (straight / 'val.jsonl').read_text()
    ta, tb = (json.loads((r / 'test.json').read_text()) for r in (straight, killed))
    assert tb['episode_accuracy'] == ta['episode_accuracy']
    ra, rb = (json.loads((r / 'result.json').read_text()) for r in (straight, killed))
    assert rb['rank_episode_digests'] == ra['rank_episode_digests'] and rb['rank_weight_digests'] == ra['rank_weight_digests']
    a, b = (load_checkpoint(r / 'checkpoints' / 'last.pt') for r in (straight, killed))
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model']) and a['model'].keys() == b['model'].keys()
    assert [json.loads(l)['outcome'] for l in (killed / 'attempts.jsonl').read_text().splitlines()] == ['started', 'resumed']

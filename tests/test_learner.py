"Tests of m2df.learner: resumption after a kill, atomic checkpoints, NaN stops, and clear errors raised before any heavy work."
import csv, itertools, json, os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path

import huggingface_hub
import pytest
import torch

from m2df import learner as L
from m2df.config import make_config
from m2df.encoders import PretrainedWeightsMissing
from m2df.learner import Learner
from m2df.runs import load_checkpoint
from m2df.splits import BENCHMARKS
from m2df.synthetic import synthetic_root

REPO = Path(__file__).resolve().parents[1]
from conftest import TINY, tiny




def cli(**kw): return [f'{k}={v}' for k, v in {**TINY, **kw}.items()]


def read_metrics(run: Path) -> list:
    with open(run / 'metrics.csv', newline='') as f: return list(csv.DictReader(f))


def metric_steps(run: Path) -> list:
    "Steps of the complete rows of metrics.csv (a line cut by a kill is skipped)."
    f = run / 'metrics.csv'
    if not f.exists(): return []
    return [int(l.split(',', 1)[0]) for l in f.read_text().splitlines(keepends=True)[1:] if l.endswith('\n')]


def child_env(**kw):
    "Environment of a child process: offline, unbuffered, one OpenMP thread."
    return dict(os.environ, HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', **kw)


def not_built(*a, **k): raise AssertionError('the model was built before the check that should have stopped the run')


# ---------------------------------------------------------------- 1. kill, then resume

def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    "SIGKILL a CLI run after a checkpoint, restart it: it goes on from the checkpoint's step and logs every step once."
    run = tmp_path / 'run'
    # 4 optimiser steps of 1 episode (5-way 1-shot, 1 query per class: small); checkpoints at steps 2 and 4, validations
    # at steps 3 and 4 (the last step)
    args = [sys.executable, '-m', 'm2df.learner', *cli(episodes=4, accumulation=1, query=1, save_every=2, val_every=3,
                                                       val_episodes=2, test_episodes=2), f'run_dir={run}']
    save_steps = 2
    last = run / 'checkpoints' / 'last.pt'
    p = subprocess.Popen(args, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt_step, seen, deadline = None, None, time.time() + 180
    try:
        while True:
            assert p.poll() is None, 'the run ended before it could be killed:\n' + p.stdout.read().decode()[-3000:]
            assert time.time() < deadline, 'no checkpoint followed by a logged step within 180 s'
            if last.exists() and last.stat().st_mtime_ns != seen:
                seen = last.stat().st_mtime_ns
                ckpt_step = torch.load(last, weights_only=True)['step']
            if ckpt_step and any(s > ckpt_step for s in metric_steps(run)): break   # a step is logged past the checkpoint
            time.sleep(0.02)
    finally:
        p.kill(); p.wait(); p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    killed_rows = read_metrics(run)
    killed_steps = metric_steps(run)
    c = load_checkpoint(last, tiny())['step']
    assert c >= 1
    assert max(killed_steps) > c, 'the kill should leave logged steps past the checkpoint (the test is about them)'
    assert max(killed_steps) - c < save_steps, 'more steps lost than the save interval'

    done = subprocess.run(args, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads((run / 'result.json').read_text())
    assert res['start_step'] == c, 'the second run did not start at the checkpoint'
    assert (res['steps'], res['episodes']) == (4, 4)
    rows = read_metrics(run)
    assert [int(r['step']) for r in rows] == [1, 2, 3, 4], 'metrics.csv must hold every step exactly once'
    assert [int(r['episode']) for r in rows] == [1, 2, 3, 4]
    assert rows[:c] == killed_rows[:c], 'rows up to the checkpoint are kept as the first process wrote them'
    # the steps after the checkpoint are redone with the same episodes and seeds: the very same row but for its time
    untimed = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]
    assert untimed(rows[c:len(killed_rows)]) == untimed(killed_rows[c:])
    vals = [json.loads(l)['step'] for l in (run / 'val.jsonl').read_text().splitlines()]
    assert vals == [3, 4]
    assert load_checkpoint(last)['step'] == 4
    assert json.loads((run / 'test.json').read_text())['episodes'] == 2
    attempts = [json.loads(l) for l in (run / 'attempts.jsonl').read_text().splitlines()]
    assert [(a['outcome'], a['step']) for a in attempts] == [('started', 0), ('resumed', c)]


# ---------------------------------------------------------------- 2. a kill during a save

KILL_DURING_SAVE = textwrap.dedent('''
    import io, os, signal, sys, torch
    from m2df import runs
    path, mode = sys.argv[1], sys.argv[2]
    runs.save_checkpoint(path, dict(model={'w': torch.zeros(10)}, config={}, step=1))
    if mode == 'mid-write':            # half of the new file written, then killed
        real = torch.save
        def dying_save(obj, f):
            buf = io.BytesIO(); real(obj, buf); data = buf.getvalue()
            f.write(data[:len(data) // 2]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
    else:                              # the new file complete, killed before the rename
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
    runs.save_checkpoint(path, dict(model={'w': torch.ones(1_000_000)}, config={}, step=2))
    print('not killed')
''')


@pytest.mark.parametrize('mode', ['mid-write', 'before-rename'])
def test_kill_during_save_keeps_previous_checkpoint(tmp_path, mode):
    last = tmp_path / 'checkpoints' / 'last.pt'
    p = subprocess.run([sys.executable, '-c', KILL_DURING_SAVE, str(last), mode], env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    s = torch.load(last, weights_only=True)
    assert s['step'] == 1 and torch.equal(s['model']['w'], torch.zeros(10))
    assert load_checkpoint(last)['step'] == 1
    files = sorted(f.name for f in last.parent.iterdir())
    assert [f for f in files if f.endswith('.pt')] == ['last.pt'], files
    strays = [f for f in files if f != 'last.pt']
    assert strays, 'the killed save should have left its temporary file (a kill cannot clean up)'
    assert all(f.startswith('.last.pt.') and f.endswith('.tmp') for f in strays), strays


# ---------------------------------------------------------------- 3. NaN loss

def test_nan_loss_stops_naming_the_episode(tmp_path):
    lr = Learner(tiny(accumulation=2, query=1), tmp_path / 'run', progress=False)
    with torch.no_grad(): next(lr.model.fusion['local'].parameters()).fill_(float('nan'))
    before = [p.detach().clone() for p in lr.model.parameters()]
    episodes = list(itertools.islice(lr.batches(1), lr.per_rank))       # the episodes of step 1: ids 2 and 3
    with pytest.raises(FloatingPointError, match=r'training episode 2 \(rank 0, step 0\)'):
        lr.train_step(episodes)
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(before, lr.model.parameters()))   # no update
    assert lr.step == 0 and not lr.run.last.exists()


# ---------------------------------------------------------------- 4. clear errors, raised early

def test_command_line_words():
    cfg, run_dir = L.cli_config(['dataset=ucf101', 'backbone=ViT-B-16', 'pretrained=none', 'lam=0.5', 'run_dir=/tmp/r'])
    assert (cfg.dataset, cfg.backbone, cfg.pretrained, cfg.lam, run_dir) == ('ucf101', 'ViT-B-16', None, 0.5, '/tmp/r')
    assert L.cli_config(['dataset=ucf101'])[0].pretrained == 'openai'
    with pytest.raises(ValueError, match="key=value, got 'episodes'"): L.cli_config(['episodes'])
    with pytest.raises(ValueError, match='lamda'): L.cli_config(['lamda=1'])


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_cuda_asked_for_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(L, 'M2DF', not_built)
    with pytest.raises(RuntimeError, match=r"device = 'cuda' but torch finds no CUDA device.*device='cpu'"):
        Learner(tiny(device='cuda'), tmp_path / 'run', progress=False)
    assert not (tmp_path / 'run').exists()


def test_missing_pretrained_weights_fail_fast_offline(tmp_path, monkeypatch):
    videos, lists = str(synthetic_root() / 'videos'), str(synthetic_root() / 'splits')   # located before HOME moves below
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))   # an empty weights cache
    monkeypatch.setenv('HOME', str(tmp_path))                                              # ~/.cache/clip is empty too
    monkeypatch.delenv('M2DF_DOWNLOAD', raising=False)
    def no_network(*a, **k): raise AssertionError(f'network access attempted: {a}')
    monkeypatch.setattr(socket.socket, 'connect', no_network)
    t = time.perf_counter()
    with pytest.raises(PretrainedWeightsMissing) as e:
        Learner(tiny(backbone='RN50', pretrained='openai', data_root=videos, splits_dir=lists), tmp_path / 'run', progress=False)
    assert time.perf_counter() - t < 15, 'the missing weights should stop the run before anything heavy'
    msg = str(e.value)
    for part in ("'RN50'", "'openai'", str(tmp_path / 'hf'), 'M2DF_DOWNLOAD=1', "pretrained='<path", 'no network'):
        assert part in msg, (part, msg)
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('data_root', [None, '/nonexistent/ucf101'])
def test_missing_data_stops_before_the_model(tmp_path, monkeypatch, data_root):
    monkeypatch.setattr(L, 'M2DF', not_built)
    with pytest.raises(FileNotFoundError) as e:
        Learner(make_config('ucf101', data_root=data_root), tmp_path / 'run', progress=False)
    assert not isinstance(e.value, PretrainedWeightsMissing)
    msg = str(e.value)
    for part in ('ucf101', 'Expected layout', '<data_root>/<class folder>/<video id>', BENCHMARKS['ucf101'].videos_url,
                 '-p data_root', 'data_root is not set' if data_root is None else repr(data_root)):
        assert part in msg, (part, msg)
    assert not (tmp_path / 'run').exists()


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    run = tmp_path / 'run'
    a = Learner(tiny(), run, progress=False)
    a.save(a.run.last)
    other = tiny(backbone='m2df-tiny-rn')
    with pytest.raises(ValueError, match=r"backbone: 'm2df-tiny-vit' -> 'm2df-tiny-rn'"):   # the run's config is checked first
        Learner(other, run, progress=False)
    with pytest.raises(ValueError, match=r"backbone: checkpoint 'm2df-tiny-vit', config 'm2df-tiny-rn'"):
        load_checkpoint(a.run.last, other)
    with pytest.raises(ValueError, match=r"frames: checkpoint 4, config 8"):
        load_checkpoint(a.run.last, tiny(frames=8))
    assert json.loads((run / 'config.json').read_text())['backbone'] == 'm2df-tiny-vit'   # the refused run wrote nothing
    assert Learner(other, run, resume=False, progress=False).step == 0                    # a fresh start is still possible


def test_papermill_train_without_data_fails_at_once(tmp_path, monkeypatch):
    import papermill as pm
    monkeypatch.setenv('OMP_NUM_THREADS', '1')                       # the kernel inherits it
    t = time.perf_counter()
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(REPO / 'nbs' / 'train.ipynb'), str(tmp_path / 'out.ipynb'), parameters=dict(dataset='ucf101'),
                            cwd=str(tmp_path), progress_bar=False)
    assert time.perf_counter() - t < 60
    assert e.value.ename == 'FileNotFoundError', e.value.ename
    assert BENCHMARKS['ucf101'].videos_url in str(e.value) and 'data_root' in str(e.value)
    assert not (tmp_path / 'runs').exists()


# ---------------------------------------------------------------- 5. nothing non-finite passes silently

def nan_(p): torch.nn.init.constant_(p, float('nan'))


def test_nan_before_a_sampled_prompt_names_the_episode(tmp_path):
    "With prompts sampled in training, torch.multinomial used to fail on NaN with a bare message naming no episode."
    lr = Learner(tiny(accumulation=2, query=1, pps_train_mode='sample'), tmp_path / 'run', progress=False)
    with torch.no_grad(): nan_(lr.model.backbone.clip.visual.conv1.weight)
    episodes = list(itertools.islice(lr.batches(1), lr.per_rank))
    with pytest.raises(FloatingPointError, match=r'non-finite query frame features at training episode 2 \(rank 0, step 0\), '
                                                 r'before the prompt selector; the weights hold NaN/inf: \[.backbone\.clip\.visual\.conv1'):
        lr.train_step(episodes)
    assert lr.step == 0


def test_nan_validation_is_an_error_never_a_best(tmp_path):
    "NaN weights scored 1/way (20.00 ± 0.00) and that score was saved as best.pt; now validation stops, naming the episode."
    lr = Learner(tiny(query=1), tmp_path / 'run', progress=False)
    with torch.no_grad(): nan_(next(lr.model.fusion['local'].parameters()))
    with pytest.raises(FloatingPointError, match=r'non-finite logits at val episode 0 .*fusion\.local'):
        lr.validate()
    assert not lr.run.best.exists() and lr.best == -1.0 and not lr.history
    with pytest.raises(FloatingPointError, match=r'NaN/inf after step 0 .*last.pt was not overwritten'):
        lr.save(lr.run.last)                                              # nor are NaN weights ever checkpointed
    assert not lr.run.last.exists()


def test_resuming_from_a_nonfinite_checkpoint_names_it(tmp_path):
    from m2df.runs import save_checkpoint
    run = tmp_path / 'run'
    lr = Learner(tiny(), run, progress=False)
    state = lr.state()
    nan_(state['model']['fusion.global.blocks.0.ffn.0.weight'] if 'fusion.global.blocks.0.ffn.0.weight' in state['model']
         else next(v for k, v in state['model'].items() if k.startswith('fusion.global') and v.is_floating_point()))
    save_checkpoint(lr.run.last, state)                                   # as a run whose weights went NaN would have left it
    with pytest.raises(FloatingPointError, match=f'checkpoint {lr.run.last} holds non-finite weights .*fusion.global'):
        Learner(tiny(), run, progress=False)


@pytest.mark.parametrize('score', [float('nan'), float('inf')])
def test_a_nonfinite_score_is_never_the_best(tmp_path, monkeypatch, score):
    "Even if an evaluation returned NaN or inf (it raises first, see above), that score would neither be best nor saved."
    lr = Learner(tiny(query=1), tmp_path / 'run', progress=False)
    monkeypatch.setattr(L, 'evaluate', lambda *a, **k: dict(accuracy=score, ci95=0.))
    rec = lr.validate()
    assert rec['best'] is False and lr.best == -1.0 and not lr.run.best.exists()

"""A run folder cannot be corrupted: one writer at a time (two real processes), a finished run left alone (a real kill),
pinned split lists, every bad value refused before a file is written, one record per evaluation and per data check,
write errors that name their cause, files created with the process umask."""
import errno, hashlib, json, os, resource, shutil, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch

from m2df import learner as L
from m2df.artifacts import ensure_run
from m2df.datacheck import DataCheckError, data_checks
from m2df.learner import Learner, evaluation_record_path, load_trained_model
from m2df.runs import (DataChangedError, FinishedRunError, RunDir, RunLock, RunLockedError, atomic_write_text,
                       save_checkpoint, write_new_text)
from m2df.synthetic import synthetic_root

from conftest import TINY, tiny

REPO = Path(__file__).resolve().parents[1]
RUN = dict(episodes=4, accumulation=2, query=2, val_every=4, val_episodes=4, test_episodes=4)   # 2 steps, 1 validation


def small(**kw): return tiny(**{**RUN, **kw})


def cli(**kw): return [f'{k}={v}' for k, v in {**TINY, **RUN, **kw}.items()]


def child_env(**kw):
    return dict(os.environ, HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', **kw)


def learner_cli(args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'm2df.learner', *args, 'progress=false'], env=child_env(**env),
                          capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict:
    "{relative path: (bytes, mtime)} of every file under `folder` but its lock file."
    return {str(f.relative_to(folder)): (f.read_bytes(), f.stat().st_mtime_ns)
            for f in sorted(folder.rglob('*')) if f.is_file() and f.name != '.lock'}


def metric_steps(run: Path) -> list:
    return [int(l.split(',', 1)[0]) for l in (run / 'metrics.csv').read_text().splitlines(keepends=True)[1:] if l.endswith('\n')]


def swapped_lists(dst: Path) -> Path:
    "A copy of the synthetic split lists with the val and test lists swapped."
    src = synthetic_root() / 'splits'
    dst.mkdir(parents=True)
    for a, b in (('train', 'train'), ('val', 'test'), ('test', 'val')): shutil.copy(src / f'{a}.txt', dst / f'{b}.txt')
    return dst


def linked_videos(dst: Path) -> Path:
    "Another data root holding the synthetic videos (a folder of links to each clip)."
    shutil.copytree(synthetic_root() / 'videos', dst, copy_function=os.symlink)
    return dst


def same_lists(dst: Path) -> Path:
    shutil.copytree(synthetic_root() / 'splits', dst)
    return dst


# ---------------------------------------------------------------- 1. two processes on one run_dir

def test_a_second_process_on_a_run_dir_stops_naming_the_first(tmp_path):
    "A double start: the second command-line run stops at once (exit 2, one line naming pid and host); the first writes alone."
    run = tmp_path / 'run'
    args = cli(episodes=100_000, accumulation=1, query=1, val_every=100_000, val_episodes=2) + [f'run_dir={run}', 'progress=false']
    first = subprocess.Popen([sys.executable, '-m', 'm2df.learner', *args], env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:   # the first holds the lock once its record is in the lock file
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.time() < deadline, 'the first run never took the lock'
            try:
                if json.loads((run / '.lock').read_text())['pid'] == first.pid: break
            except (OSError, ValueError, KeyError): pass
            time.sleep(0.05)
        # without the lock the second trains too (for hours): the timeout fails the test
        second = subprocess.run([sys.executable, '-m', 'm2df.learner', *args], env=child_env(), capture_output=True, text=True,
                                timeout=120)
        while not (run / 'metrics.csv').exists() and first.poll() is None and time.time() < deadline + 120: time.sleep(0.1)
        time.sleep(1)
        still_running = first.poll() is None
    finally:
        first.kill(); first.wait(); first.stdout.close()
    assert still_running, 'the first run stopped'
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and 'Traceback' not in second.stderr, second.stderr
    assert f'is in use by another process (pid {first.pid} on host {socket.gethostname()}, started ' in err[0], err[0]
    steps = metric_steps(run)
    assert steps == list(range(1, len(steps) + 1)) and steps, 'every step logged once, by the first process'
    attempts = [json.loads(l) for l in (run / 'attempts.jsonl').read_text().splitlines()]
    assert [a['outcome'] for a in attempts] == ['started'], 'the refused process wrote nothing'
    assert json.loads((run / 'config.json').read_text())['episodes'] == 100_000


def test_the_lock_names_its_holder_and_goes_with_a_killed_process(tmp_path):
    "In-process: a lock held elsewhere is refused with a RunLockedError; a SIGKILLed holder leaves no stale lock."
    d = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', f'import time; from m2df.runs import RunLock; RunLock({str(d)!r}).acquire(); '
                               'print("locked", flush=True); time.sleep(600)'], env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(RunLockedError, match=f'pid {holder.pid} on host'): RunLock(d).acquire()
        with pytest.raises(RunLockedError): Learner(small(), d, progress=False)
        assert [f.name for f in d.iterdir()] == ['.lock'], 'the refused learner wrote nothing'
    finally:
        holder.send_signal(signal.SIGKILL); holder.wait(); holder.stdout.close()
    assert json.loads((d / '.lock').read_text())['pid'] == holder.pid      # the file stays; its lock went with the process
    with RunLock(d): pass


# ---------------------------------------------------------------- 2. a finished run whose last.pt was deleted

def test_a_finished_run_without_last_pt_is_left_alone_and_restart_moves_it_aside(tmp_path):
    "The same command on a finished run that lost last.pt, killed at its first step if it trains: refused, nothing rewritten."
    run = tmp_path / 'run'
    Learner(small(), run, progress=False).fit()
    (run / 'checkpoints' / 'last.pt').unlink()
    before = snapshot(run)
    assert {'test.json', 'result.json', 'metrics.csv', 'val.jsonl', 'checkpoints/best.pt'} <= set(before)
    again = learner_cli(cli() + [f'run_dir={run}'], M2DF_KILL_AT='step:1')
    assert again.returncode == 2, (again.returncode, again.stderr[-2000:])   # before the fix: killed at step 1 (-9)
    err = again.stderr.strip().splitlines()
    assert len(err) == 1 and 'holds a finished run (it holds result.json)' in err[0] and 'restart=true' in err[0], err
    assert snapshot(run) == before, 'a refused restart changed the run folder'
    # the records alone tell a finished run (test.json and result.json gone too)
    (run / 'test.json').unlink(); (run / 'result.json').unlink()
    with pytest.raises(FinishedRunError, match='its metrics.csv reaches episode 4 of 4'): Learner(small(), run, progress=False)
    Learner(small(), run, progress=False, restart=True).fit()   # explicit: the old folder is kept under another name
    (old,) = tmp_path.glob('run.old-*')
    assert {k: v for k, v in snapshot(old).items()} == {k: v for k, v in before.items() if k not in ('test.json', 'result.json')}
    assert (run / 'checkpoints' / 'last.pt').exists() and metric_steps(run) == [1, 2]
    attempts = [json.loads(l) for l in (run / 'attempts.jsonl').read_text().splitlines()]
    assert [a['outcome'] for a in attempts] == ['started'] and attempts[0]['moved_aside'] == str(old)


def test_restart_on_the_command_line_then_a_kill_leaves_no_stale_lock(tmp_path):
    "restart=true moves the folder aside; the run killed by SIGKILL at step 1 is resumed by the same command (no stale lock)."
    run = tmp_path / 'run'
    Learner(small(), run, progress=False).fit()
    before = snapshot(run)
    killed = learner_cli(cli() + [f'run_dir={run}', 'restart=true'], M2DF_KILL_AT='step:1')
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (old,) = tmp_path.glob('run.old-*')
    assert snapshot(old) == before
    assert (run / '.lock').exists() and metric_steps(run) == [1]
    done = learner_cli(cli() + [f'run_dir={run}'])
    assert done.returncode == 0, done.stderr[-2000:]
    assert metric_steps(run) == [1, 2] and (run / 'test.json').exists()
    assert [json.loads(l)['outcome'] for l in (run / 'attempts.jsonl').read_text().splitlines()] == ['started', 'resumed']


# ---------------------------------------------------------------- 3. pinned split lists

def test_split_lists_are_pinned_at_the_first_start(tmp_path):
    "A resumption (or an evaluation) reading lists whose content differs is refused naming the file; the same content elsewhere is fine."
    run = tmp_path / 'run'
    a = same_lists(tmp_path / 'a')
    Learner(small(splits_dir=str(a)), run, progress=False).fit(test=False)
    pinned = json.loads((run / 'data.json').read_text())
    for s in ('train', 'val', 'test'):
        assert pinned['files'][s] == dict(file=str((a / f'{s}.txt').resolve()),
                                          sha256=hashlib.sha256((a / f'{s}.txt').read_bytes()).hexdigest())
    swapped = swapped_lists(tmp_path / 'swapped')
    before = snapshot(run)
    with pytest.raises(DataChangedError, match=f"{swapped / 'val.txt'} \\(val\\) differs in content from {a / 'val.txt'}"):
        Learner(small(episodes=8, splits_dir=str(swapped)), run, progress=False)
    assert snapshot(run) == before
    with pytest.raises(DataChangedError, match='val.txt'):
        load_trained_model(run / 'checkpoints' / 'best.pt', splits_dir=str(swapped))
    moved = same_lists(tmp_path / 'b')                                 # the same lists in another folder: allowed
    more = Learner(small(episodes=8, splits_dir=str(moved)), run, progress=False)
    assert more.step == 2
    model, cfg, _ = load_trained_model(run / 'checkpoints' / 'best.pt', splits_dir=str(moved))
    assert cfg.splits_dir == str(moved)


# ---------------------------------------------------------------- 4. every value checked before a file is written

BAD_WORDS = [('grad_clip=-1', "'grad_clip' = -1.0"), ('grad_clip=0', "'grad_clip' = 0.0"), ('logit_scale=0', "'logit_scale' = 0.0"),
             ('logit_scale=-5', "'logit_scale' = -5.0"), ('lam=-1', "'lam' = -1.0"), ('lam_vt=-1', "'lam_vt' = -1.0"),
             ('seed=-1', "'seed' = -1"), ('eval_seed=-1', "'eval_seed' = -1"), ('otam_lambda=0', "'otam_lambda' = 0.0"),
             ('pps_tau=-200', "'pps_tau' = -200.0"), ('gtce_kernel=0', "'gtce_kernel' = 0"), ('fusion_heads=3', "'fusion_heads' = 3"),
             ('gtce_dropout=1.5', "'gtce_dropout' = 1.5"), ('val_every=0', "'val_every' = 0"),
             ('dataset=foo', "'dataset' = 'foo'"), ('preset=foo', "'preset' = 'foo'"),
             ('way=7', "'way' = 7: the val list"), ('eval_query=30', "'eval_query' = 30"), ('query=20', "'query' = 20")]


@pytest.mark.parametrize('word,msg', BAD_WORDS)
def test_every_bad_value_is_one_line_exit_2_before_any_file(tmp_path, capsys, word, msg):
    with pytest.raises(SystemExit) as e: L.main([*cli(), word, f'run_dir={tmp_path / "run"}', 'progress=false'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('m2df.learner: ') and msg in err, err
    assert not (tmp_path / 'run').exists(), 'a file was written before the value was refused'


def test_bad_values_on_the_command_line_print_no_traceback(tmp_path):
    for word, msg in [('dataset=foo', "'dataset' = 'foo'"), ('fusion_heads=3', "'fusion_heads' = 3"), ('way=7', "'way' = 7")]:
        p = learner_cli(cli() + [word, f'run_dir={tmp_path / "run"}'])
        assert p.returncode == 2 and 'Traceback' not in p.stderr, (word, p.stderr[-2000:])
        assert len(p.stderr.strip().splitlines()) == 1 and msg in p.stderr, p.stderr
        assert not (tmp_path / 'run').exists()


def test_a_negative_grad_clip_never_reaches_training():
    "grad_clip=-1 used to flip the sign of the clipped gradient (the loss grew 676 -> 2543)."
    with pytest.raises(ValueError, match="'grad_clip' = -1.0: must be positive"): tiny(grad_clip=-1)


# ---------------------------------------------------------------- 5. evaluation: architecture check and one record each

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp('trained') / 'run'
    Learner(small(), run, progress=False).fit()
    return run


@pytest.mark.parametrize('override,value', [('frames', 8), ('use_pps', False), ('views', ('local',)), ('fusion_heads', 2)])
def test_evaluation_refuses_architecture_overrides(trained, override, value):
    extra = dict(distill=False) if override == 'views' else {}
    with pytest.raises(ValueError, match=f'{override} = '):
        load_trained_model(trained / 'checkpoints' / 'best.pt', **{override: value}, **extra)


def test_each_evaluation_writes_its_own_record(trained, tmp_path):
    import papermill as pm
    ckpt = trained / 'checkpoints' / 'best.pt'
    for i in range(2):
        pm.execute_notebook(str(REPO / 'nbs' / 'evaluate.ipynb'), str(tmp_path / f'e{i}.ipynb'), cwd=str(tmp_path), progress_bar=False,
                            parameters=dict(checkpoint=str(ckpt), test_episodes=3))
    recs = sorted((trained / 'evaluations').iterdir())
    first = trained / 'evaluations' / f"eval-test-best-5w1s-{hashlib.sha256(json.dumps({'test_episodes': 3}).encode()).hexdigest()[:8]}.json"
    assert sorted(r.name for r in recs) == sorted([first.name, first.name.replace('.json', '-2.json')])
    for r in recs:
        rec = json.loads(r.read_text())
        assert rec['checkpoint'] == str(ckpt.resolve()) and rec['overrides'] == {'test_episodes': 3} and rec['episodes'] == 3
        assert rec['checkpoint_step'] == 2
    assert not (trained / 'eval-test-5w1s.json').exists()
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(REPO / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'e3.ipynb'), cwd=str(tmp_path), progress_bar=False,
                            parameters=dict(checkpoint=str(ckpt), frames=8))
    assert e.value.ename == 'ConfigError' and 'frames = 8 (trained with 4)' in e.value.evalue
    assert len(list((trained / 'evaluations').iterdir())) == 2


def test_evaluation_record_names(tmp_path):
    cfg = tiny()
    ckpt = tmp_path / 'run' / 'checkpoints' / 'best.pt'
    assert evaluation_record_path(ckpt, 'test', cfg, {}) == tmp_path / 'run' / 'evaluations' / 'eval-test-best-5w1s.json'
    a, b = (evaluation_record_path(ckpt, 'test', cfg, o) for o in ({'test_episodes': 3}, {'test_episodes': 4}))
    assert a != b and a.parent == b.parent
    assert evaluation_record_path(ckpt.with_name('last.pt'), 'val', cfg, {}).name == 'eval-val-last-5w1s.json'
    p = write_new_text(tmp_path / 'r.json', 'one')
    q = write_new_text(tmp_path / 'r.json', 'two')
    assert (p.read_text(), q.name, q.read_text()) == ('one', 'r-2.json', 'two')


# ---------------------------------------------------------------- 7. the drivers' run key holds the data

def test_ensure_run_does_not_reuse_a_run_of_other_data(tmp_path):
    from m2df.artifacts import run_path
    cfg = small()
    d = ensure_run(cfg, run_path(tmp_path / 'runs', cfg))
    assert ensure_run(cfg.replace(splits_dir=str(same_lists(tmp_path / 'same'))), d) == d     # same contents: the same run
    swapped = swapped_lists(tmp_path / 'swapped')
    t0 = time.time()
    with pytest.raises(DataChangedError, match=f"reusing run_dir .* {swapped / 'val.txt'} \\(val\\) differs"):
        ensure_run(cfg.replace(splits_dir=str(swapped)), d)
    videos = linked_videos(tmp_path / 'videos')
    with pytest.raises(ValueError, match=f'was trained on the videos under .*, asked {videos}'):
        ensure_run(cfg.replace(data_root=str(videos)), d)
    assert time.time() - t0 < 30


# ---------------------------------------------------------------- 9. data check records appended

def test_a_data_check_is_appended_never_rewritten(tmp_path):
    "A finished run started again on a data root that lost a video: the check stops it and the first record stays."
    run = tmp_path / 'run'
    Learner(small(), run, progress=False).fit()
    (first,) = data_checks(run)
    assert first['problems'] == []
    videos = linked_videos(tmp_path / 'videos')
    gone = sorted(videos.rglob('*.mp4'))[0]; gone.unlink()
    line = (run / 'data_check.jsonl').read_text()
    with pytest.raises(DataCheckError): Learner(small(data_root=str(videos)), run, progress=False)
    recs = data_checks(run)
    assert len(recs) == 2 and recs[0] == first and (run / 'data_check.jsonl').read_text().startswith(line)
    assert [p['kind'] for p in recs[1]['problems']] == ['missing'] and recs[1]['data_root'] == str(videos)


# ---------------------------------------------------------------- 10. write errors name their cause; the umask is honoured

FILE_SIZE_LIMIT = textwrap.dedent('''
    import resource, sys, torch
    from m2df.runs import save_checkpoint, atomic_write_text
    path = sys.argv[1]
    save_checkpoint(path, dict(model={'w': torch.zeros(10)}, config={}, step=1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))     # SIGXFSZ is ignored by Python: the write fails
    for write in (lambda: save_checkpoint(path, dict(model={'w': torch.ones(1_000_000)}, config={}, step=2)),
                  lambda: atomic_write_text(path + '.json', 'x' * 1_000_000)):
        try: write()
        except OSError as e: print(e)
''')


def test_a_file_size_limit_is_named_and_keeps_the_old_checkpoint(tmp_path):
    last = tmp_path / 'checkpoints' / 'last.pt'
    p = subprocess.run([sys.executable, '-c', FILE_SIZE_LIMIT, str(last)], env=child_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines() == [f'[Errno {errno.EFBIG}] file size limit exceeded writing {last} (the previous file, if any, is kept)',
                                     f'[Errno {errno.EFBIG}] file size limit exceeded writing {last}.json (the previous file, if any, is kept)']
    s = torch.load(last, weights_only=True)
    assert s['step'] == 1 and torch.equal(s['model']['w'], torch.zeros(10))
    assert sorted(f.name for f in last.parent.iterdir()) == ['last.pt']       # no temporary left behind


def test_a_full_disk_is_named_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    from m2df import runs
    last = tmp_path / 'last.pt'
    save_checkpoint(last, dict(model={'w': torch.zeros(10)}, config={}, step=1))
    real = os.fdopen
    class Full:
        "A file on a disk with 1000 bytes left."
        def __init__(self, f): self.f, self.n = f, 0
        def write(self, b):
            self.n += len(b)
            if self.n > 1000: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)
        def __getattr__(self, k): return getattr(self.f, k)
        def __enter__(self): return self
        def __exit__(self, *a): self.f.close()
    monkeypatch.setattr(runs.os, 'fdopen', lambda fd, mode='r', *a, **k: Full(real(fd, mode, *a, **k)))
    with pytest.raises(OSError, match=f'no space left on device writing {last}'):
        save_checkpoint(last, dict(model={'w': torch.ones(100_000)}, config={}, step=2))
    with pytest.raises(OSError, match=f'no space left on device writing {tmp_path / "t.json"}'):
        atomic_write_text(tmp_path / 't.json', 'x' * 5000)
    monkeypatch.undo()
    assert torch.load(last, weights_only=True)['step'] == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == ['last.pt']


@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=['022', '077', '002'])
def test_run_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        r = RunDir(tmp_path / 'run')
        r.start(tiny(), 0)
        save_checkpoint(r.last, dict(model={'w': torch.zeros(2)}, config={}, step=1))
        r.write_json('test.json', {'a': 1})
        made = [r.path / 'config.json', r.path / 'env.json', r.path / 'attempts.jsonl', r.path / 'test.json', r.last,
                write_new_text(r.path / 'evaluations' / 'e.json', '{}')]
    finally:
        os.umask(old)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in made} == {f.name: oct(mode) for f in made}


def test_the_lock_goes_with_a_killed_holder_whose_forked_children_live_on(tmp_path):
    "A holder that forked a child (as DataLoader workers are forked) and is then SIGKILLed leaves the lock free while the child lives."
    d = tmp_path / 'run'
    code = (f'import os, time; from m2df.runs import RunLock; RunLock({str(d)!r}).acquire()\n'
            'pid = os.fork()\n'
            'if pid == 0: time.sleep(600); os._exit(0)\n'
            'print(pid, flush=True); time.sleep(600)')
    holder = subprocess.Popen([sys.executable, '-c', code], env=child_env(), stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunLockedError): RunLock(d).acquire()
        holder.send_signal(signal.SIGKILL); holder.wait()
        os.kill(child, 0)                       # the forked child is still alive
        with RunLock(d): pass                   # and the lock went with its parent (a flock would still be held here)
    finally:
        for pid in (child,):
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
        holder.stdout.close()

"""Peak memory and time of one CLIP-M²DF training step per backbone and shot, with and without each memory option.

One training step is what `m2df.learner.Learner.train_step` does for one episode: the model's forward pass (under
autocast when mixed precision is on), the loss, the backward pass and an Adam step, here with random weights
(`pretrained=None`) and random pixels. Episodes are 5-way K-shot with 5 queries per class, T = 8 frames at 224 px:
1-shot is 30 clips = 240 frames through the backbone, 5-shot 50 clips = 400 frames. Options (config fields):

  plain      float32, one backbone pass over all frames
  amp        mixed precision, bfloat16 autocast (`amp=True`; the learner applies it on CUDA; here also on the CPU)
  ckpt       activation checkpointing of the visual tower (`grad_checkpointing=True`)
  chunk      backbone passes of `--chunk` frames, each recomputed in the backward pass (`backbone_chunk`); refused for
             RN50 in training (BatchNorm), printed as such
  ckpt+amp, chunk+amp, ckpt+chunk+amp

On a GPU (`--device cuda`) each case runs the full episodes and reports `torch.cuda.max_memory_allocated` over the step
(the optimiser state already allocated, as in every step after the first) and its time; a case that runs out of
memory says so.

On the CPU a full step would take minutes and far more memory than a shared machine has, so each case runs in a child
process, on reduced episodes (2-way 1-shot 1 query: 4 clips, with T = 2 and T = 4 frames, i.e. 8 and 16 frames through
the backbone), and reports the child's peak resident memory during the step (VmHWM, reset after the model and the
optimiser state are built) above its resident memory before the step, and its CPU time. A watchdog kills a child whose
resident memory passes `--limit` GB ("over limit"). From the two sizes the step's memory is extrapolated linearly in the
number of frames F through the backbone, peak(F) = before + fixed + per_frame x F, to F = 240 and 400 (for `chunk`, the
chunk's activations are part of `fixed`: they are measured at `--cpu-chunk` frames and rescaled to `--chunk` frames with
the per-frame cost of `plain`); every figure of the arithmetic is printed. CPU figures are estimates for a GPU: a CPU
step keeps different temporaries (no fused attention kernels, oneDNN work buffers) and the allocator differs.

    python tests/benchmarks/bench_memory.py [--device cpu] [--backbones RN50,ViT-B-16] [--options plain,amp,ckpt,chunk,...]
                                            [--limit 6] [--chunk 40] [--cpu-chunk 4] [--threads 1]
    python tests/benchmarks/bench_memory.py --device cuda --shots 1,5
"""
import argparse, json, math, os, subprocess, sys, tempfile, time
from contextlib import nullcontext

import torch

from m2df.config import make_config
from m2df.model import M2DF, m2df_loss

NAMES = ['apply eye makeup', 'archery', 'baby crawling', 'balance beam', 'band marching']
OPTIONS = {'plain': {}, 'amp': dict(amp=True), 'ckpt': dict(grad_checkpointing=True), 'chunk': dict(chunk=True),
           'ckpt+amp': dict(grad_checkpointing=True, amp=True), 'chunk+amp': dict(chunk=True, amp=True),
           'ckpt+chunk+amp': dict(grad_checkpointing=True, chunk=True, amp=True)}
GB = 1024 ** 3


def episode_config(backbone, way, shot, query, frames, grad_checkpointing=False, chunk=0):
    "The paper's config of one training episode shape, random weights."
    return make_config('ucf101', backbone=backbone, way=way, shot=shot, query=query, frames=frames,
                       pps_topk=min(4, frames), grad_checkpointing=grad_checkpointing, backbone_chunk=chunk,
                       num_workers=0).replace(pretrained=None)   # (make_config ignores None overrides)


def build(cfg, device):
    "Model, Adam with its state allocated (as after the first step), a random episode and its class texts."
    torch.manual_seed(0)
    model = M2DF(cfg).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    for p in params: p.grad = torch.zeros_like(p)
    opt.step(); opt.zero_grad(set_to_none=True)          # allocates the moments; a zero gradient changes no weight
    S = model.backbone.image_size
    ep = dict(support=torch.randn(cfg.way * cfg.shot, cfg.frames, 3, S, S, device=device),
              query=torch.randn(cfg.way * cfg.query, cfg.frames, 3, S, S, device=device),
              support_labels=torch.arange(cfg.way, device=device).repeat_interleave(cfg.shot),
              query_labels=torch.arange(cfg.way, device=device).repeat_interleave(cfg.query))
    text = model.class_text((NAMES * 2)[:cfg.way])
    return model, opt, ep, text


def train_step(model, opt, ep, text, cfg, device, amp: bool):
    "One episode's forward (autocast when `amp`), loss, backward and Adam step, as Learner.train_step does."
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    with ctx:
        out = model(ep['support'], ep['query'], ep['support_labels'], text)
    loss, _ = m2df_loss(out, ep['query_labels'], cfg)
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    return float(loss)


# ---------------------------------------------------------------------------------------------- CPU: child processes
def rss(pid='self', key='VmRSS') -> int:
    "Resident memory (or its high-water mark, key='VmHWM') of a process in bytes, from /proc."
    for line in open(f'/proc/{pid}/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) * 1024
    return 0


def child(spec: dict):
    "Run one measured step in this process and print its figures as one JSON line."
    torch.set_num_threads(spec['threads'])
    device = torch.device('cpu')
    cfg = episode_config(spec['backbone'], spec['way'], spec['shot'], spec['query'], spec['frames'],
                         spec['grad_checkpointing'], spec['chunk'])
    model, opt, ep, text = build(cfg, device)
    before = rss()
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')        # reset VmHWM to the current resident size
    c, w = time.process_time(), time.perf_counter()
    try: train_step(model, opt, ep, text, cfg, device, spec['amp'])
    except ValueError as e:
        print(json.dumps(dict(refused=str(e)))); return
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    print(json.dumps(dict(before=before, peak=rss(key='VmHWM'), cpu=cpu, wall=wall)))


def run_child(spec: dict, limit: float) -> dict:
    "Measure `spec` in a child process killed when its resident memory passes `limit` bytes."
    # a fixed mmap threshold: every large tensor is its own mapping, returned to the system when freed, so that the
    # resident size follows the live tensors (glibc otherwise raises the threshold and keeps freed blocks resident)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', MALLOC_TRIM_THRESHOLD_='65536')
    p = subprocess.Popen([sys.executable, __file__, '--child', json.dumps(spec)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    top = 0
    while p.poll() is None:
        try: top = max(top, rss(p.pid))
        except (FileNotFoundError, ProcessLookupError): break
        if top > limit:
            p.kill(); p.wait()
            return dict(over=top)
        time.sleep(0.02)
    out, err = p.communicate()
    lines = [l for l in out.splitlines() if l.startswith('{')]
    if p.returncode or not lines: raise RuntimeError(f'child {spec} failed ({p.returncode}): {err[-2000:]}')
    return json.loads(lines[-1])


def cpu_main(a):
    limit = a.limit * GB
    print(f'CPU, torch {torch.__version__}, {a.threads} thread(s) per child, watchdog at {a.limit:g} GB resident; '
          f'load average {os.getloadavg()[0]:.1f}; reduced episodes: 2-way 1-shot 1 query = 4 clips of T = 2 and 4 frames '
          f'(8 and 16 frames through the backbone); chunk measured at {a.cpu_chunk} frames')
    sizes = (2, 4)
    res = {}
    for bb in a.backbones.split(','):
        for name in a.options.split(','):
            o = OPTIONS[name]
            rows = []
            for T in sizes:
                spec = dict(backbone=bb, way=2, shot=1, query=1, frames=T, amp=bool(o.get('amp')), threads=a.threads,
                            grad_checkpointing=bool(o.get('grad_checkpointing')), chunk=a.cpu_chunk if o.get('chunk') else 0)
                r = run_child(spec, limit); rows.append(r)
                if 'refused' in r or 'over' in r: break
            res[bb, name] = rows
            show(bb, name, rows, sizes)
    summary(a, res, sizes)
    if a.out:
        with open(a.out, 'w') as f: json.dump([dict(backbone=b, case=n, frames=[4 * T for T in sizes], rows=r)
                                               for (b, n), r in res.items()], f, indent=1)


def show(bb, name, rows, sizes):
    cells = []
    for T, r in zip(sizes, rows):
        F = 4 * T
        if 'refused' in r: cells.append('refused: ' + r['refused'][:90] + '...'); break
        if 'over' in r: cells.append(f'F={F}: OVER LIMIT (killed at {r["over"] / GB:.2f} GB)'); break
        cells.append(f'F={F}: +{(r["peak"] - r["before"]) / GB:.3f} GB over {r["before"] / GB:.2f} GB, '
                     f'{r["cpu"]:.1f} s CPU')
    print(f'{bb:<9} {name:<15} ' + ' | '.join(cells), flush=True)


def summary(a, res, sizes):
    F1, F2 = 4 * sizes[0], 4 * sizes[1]
    print(f'\nextrapolation per case: per_frame = (step(F={F2}) - step(F={F1})) / {F2 - F1}, fixed = step(F={F1}) - '
          f'per_frame x {F1}; step(F) = fixed + per_frame x F; peak(F) = before + step(F). "time vs plain": CPU time of '
          f'the step at F={F2} over that of plain (the backbone is ~99% of a step)')
    for bb in a.backbones.split(','):
        base = res.get((bb, 'plain'))
        ok = lambda rows: rows is not None and len(rows) == 2 and all('peak' in r for r in rows)
        def slope_of(name):
            rows = res.get((bb, name))
            return ((rows[1]['peak'] - rows[1]['before']) - (rows[0]['peak'] - rows[0]['before'])) / (F2 - F1) \
                if ok(rows) else None
        print(f'\n{bb}:  {"case":<15} {"per frame MB":>12} {"fixed GB":>9} {"before GB":>9} '
              f'{"peak F=240 GB":>14} {"peak F=400 GB":>14} {"time vs plain":>13}')
        for name in a.options.split(','):
            rows = res[bb, name]
            if not ok(rows):
                why = 'refused (BatchNorm in training)' if any('refused' in r for r in rows) else 'over limit, not extrapolated'
                print(f'{"":<5}{name:<15} {why}'); continue
            s1, s2 = (r['peak'] - r['before'] for r in rows)
            slope = (s2 - s1) / (F2 - F1)
            fixed = s1 - slope * F1
            note = ''
            if OPTIONS[name].get('chunk'):
                # one chunk of a.chunk frames instead of a.cpu_chunk: the per-frame cost of the same case without chunks
                same = '+'.join(k for k in name.split('+') if k != 'chunk') or 'plain'
                inner = slope_of(same)
                if inner is None: print(f'{"":<5}{name:<15} needs {same!r} measured to rescale the chunk'); continue
                fixed += inner * (a.chunk - a.cpu_chunk)
                note = f'  (fixed + {inner / 2**20:.1f} MB per frame of {same} x ({a.chunk} - {a.cpu_chunk}) frames)'
            before = rows[1]['before']
            t = rows[1]['cpu'] / (base[1]['cpu'] if base and ok(base) else float('nan'))
            p240, p400 = ((before + fixed + slope * F) / GB for F in (240, 400))
            print(f'{"":<5}{name:<15} {slope / 2**20:12.1f} {fixed / GB:9.2f} {before / GB:9.2f} {p240:14.1f} {p400:14.1f} '
                  f'{t:12.2f}x{note}')


# ---------------------------------------------------------------------------------------------- GPU: full episodes
def gpu_main(a):
    device = torch.device(a.device)
    print(f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}; full episodes: 5-way K-shot 5 queries, '
          f'T=8, 224 px; chunk {a.chunk} frames; peak = torch.cuda.max_memory_allocated over one step (after a warm-up step)')
    print(f'{"backbone":<9} {"shot":>4} {"frames":>6} {"case":<15} {"peak GB":>8} {"step s":>7} {"fits 24 GB":>10}')
    for bb in a.backbones.split(','):
        for shot in (int(s) for s in a.shots.split(',')):
            for name in a.options.split(','):
                o = OPTIONS[name]
                cfg = episode_config(bb, 5, shot, 5, 8, bool(o.get('grad_checkpointing')), a.chunk if o.get('chunk') else 0)
                F = 5 * (shot + 5) * 8
                try:
                    model, opt, ep, text = build(cfg, device)
                    train_step(model, opt, ep, text, cfg, device, bool(o.get('amp')))          # warm-up
                    torch.cuda.synchronize(device); torch.cuda.reset_peak_memory_stats(device)
                    t = time.perf_counter()
                    for _ in range(a.reps): train_step(model, opt, ep, text, cfg, device, bool(o.get('amp')))
                    torch.cuda.synchronize(device)
                    dt = (time.perf_counter() - t) / a.reps
                    peak = torch.cuda.max_memory_allocated(device) / GB
                    print(f'{bb:<9} {shot:>4} {F:>6} {name:<15} {peak:8.2f} {dt:7.3f} {"yes" if peak < 24 else "NO":>10}', flush=True)
                except torch.cuda.OutOfMemoryError:
                    print(f'{bb:<9} {shot:>4} {F:>6} {name:<15} {"out of memory":>17}', flush=True)
                except ValueError as e:
                    print(f'{bb:<9} {shot:>4} {F:>6} {name:<15} refused: {str(e)[:80]}...', flush=True)
                finally:
                    model = opt = ep = None
                    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cpu', help='cpu (child processes, reduced episodes) or cuda[:N] (full episodes)')
    ap.add_argument('--backbones', default='RN50,ViT-B-16')
    ap.add_argument('--options', default=','.join(OPTIONS))
    ap.add_argument('--shots', default='1,5', help='GPU: the shots measured')
    ap.add_argument('--chunk', type=int, default=40, help='frames per backbone pass for the chunk cases (5 clips)')
    ap.add_argument('--cpu-chunk', type=int, default=4, help='CPU: frames per backbone pass measured for the chunk cases')
    ap.add_argument('--limit', type=float, default=6., help='CPU: kill a child above this resident memory (GB)')
    ap.add_argument('--threads', type=int, default=1, help='CPU: torch threads per child')
    ap.add_argument('--reps', type=int, default=3, help='GPU: timed steps per case')
    ap.add_argument('--out', default=None, help='CPU: also write the measurements to this JSON file')
    ap.add_argument('--child', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(json.loads(a.child))
    return cpu_main(a) if a.device == 'cpu' else gpu_main(a)


if __name__ == '__main__':
    main()

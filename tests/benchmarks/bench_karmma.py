"""Inference cost of the KARMMA teacher and student: time per clip and parameter counts, with their ratios, in one run.

Two shapes:

* tiny: the synthetic defaults (`make_karmma_config('synthetic', ...)`): 4 frames of 32², a 2 s log-mel (64 × 201);
  batch 1, several repetitions, median and best;
* paper: the `paper` presets on Epic-Kitchens shapes: Video Swin-B (teacher) / Swin-T (student) from torchvision with
  random weights (the Kinetics-400 weights change the values, not the cost) for RGB and flow, 16 frames of 224², and the
  same 2 s log-mel for audio (teacher: Swin-B on the spectrogram as a 2-frame clip; student: the small spectrogram
  transformer). On a CPU one such clip takes seconds to tens of seconds, so by default it is timed on ONE clip with ONE
  repetition after one warm-up pass (--paper-reps to change).

Each model runs all three modalities (extractors, Θ-Average, fusion, MLP) in eval mode under `torch.inference_mode`.

It also prints what the teacher's token cache holds per clip and view (float16 tokens after Θ-Average), and what
giving the teacher the student's exact clip costs per student step: with the clip's tokens cached, the teacher only
runs its fusion block and MLP; on the fly (`views=0`, a new sampling every epoch), it runs its extractors too. The
student step is forward, backward and an AdamW step on one clip.

    python tests/benchmarks/bench_karmma.py [--reps 20] [--paper-reps 1] [--threads N] [--device cpu] [--skip-paper]
"""
import argparse, statistics, time
import torch
from m2df.karmma.model import KarmmaModel, karmma_loss, make_karmma_config, parameter_count


def clip_inputs(cfg, mel=(64, 201), batch=1, device='cpu'):
    "One batch of random inputs in the shapes of the data contract, every modality present."
    T, S = cfg.frames, cfg.size
    shapes = dict(rgb=(T, 3, S, S), flow=(T, 2, S, S), audio=(1, *mel))
    x = {m: torch.randn(batch, *shapes[m], device=device) for m in cfg.modalities}
    return x, {m: torch.ones(batch, dtype=torch.bool, device=device) for m in cfg.modalities}


def timed(fn, reps, device, warmup=1):
    "(best, median) seconds of fn() over `reps` runs after `warmup` runs."
    sync = (lambda: torch.cuda.synchronize()) if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup): fn(); sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def bench(dataset, scale, reps, device, **over):
    "Time per clip and parameters of the teacher and the student of one scale."
    rows = {}
    for role in ('teacher', 'student'):
        cfg = make_karmma_config(dataset, role, scale, extractor_weights='none', device=str(device), **over)
        model = KarmmaModel(cfg).to(device).eval()
        x, present = clip_inputs(cfg, device=device)
        with torch.inference_mode():
            tok = {m: v for m, v in model.extract(x).items() if m != '_zero'}
            tokens = {m: v.shape[1] for m, v in tok.items()}
            best, med = timed(lambda: model(x, present), reps, device)
            if role == 'teacher':
                fusion_best, fusion_med = timed(lambda: model.classify(tok, present), reps, device)
        if role == 'student':       # one training step: forward, backward, AdamW
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            labels = {t: torch.zeros(1, dtype=torch.long, device=device) for t in cfg.targets}
            t_logits = {t: torch.randn(1, n, device=device) for t, n in cfg.classes.items()}
            def step():
                out = model(x, present)
                loss, _ = karmma_loss(cfg, out, labels, present, t_logits)
                opt.zero_grad(); loss.backward(); opt.step()
            step_best, step_med = timed(step, reps, device)
        rows[role] = dict(params=parameter_count(model), extractor_params=parameter_count(model.extractors),
                          best=best, median=med, tokens=tokens, token_bytes=sum(2 * v.shape[1] * v.shape[2] for v in tok.values()),
                          extractors=f'{cfg.video_extractor} (V, F) + {cfg.audio_extractor} (A)', fusion=f'{cfg.fusion_dim}×{cfg.fusion_layers}')
        if role == 'teacher': rows[role].update(fusion_median=fusion_med)
        if role == 'student': rows[role].update(step_median=step_med)
        del model
    return rows


def report(name, rows, reps):
    t, s = rows['teacher'], rows['student']
    print(f'\n== {name} ({reps} repetition{"s" if reps > 1 else ""} of one clip, batch 1) ==')
    for role, r in rows.items():
        print(f"{role:8s} {r['extractors']:38s} fusion {r['fusion']:7s} tokens {r['tokens']}  "
              f"params {r['params'] / 1e6:8.2f} M (extractors {r['extractor_params'] / 1e6:.2f} M)  "
              f"time/clip best {1e3 * r['best']:9.1f} ms  median {1e3 * r['median']:9.1f} ms")
    print(f"teacher / student: parameters {t['params'] / s['params']:.2f}x, time per clip {t['median'] / s['median']:.2f}x (median)")
    print(f"teacher token cache: {t['token_bytes'] / 2 ** 20:.3f} MiB per clip and view (float16, after Θ-Average)")
    cached, fly = s['step_median'] + t['fusion_median'], s['step_median'] + t['median']
    print(f"student step with the teacher on the same clip: cached tokens {1e3 * cached:.1f} ms "
          f"(student step {1e3 * s['step_median']:.1f} + teacher fusion {1e3 * t['fusion_median']:.1f}), "
          f"on the fly {1e3 * fly:.1f} ms: {fly / cached:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=20, help='repetitions for the tiny shapes')
    ap.add_argument('--paper-reps', type=int, default=1, help='repetitions for the paper shapes (slow on a CPU)')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s choice)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--skip-paper', action='store_true')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f'torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads')
    torch.manual_seed(0)
    report('tiny (synthetic defaults: 4 frames of 32², log-mel 64×201)', bench('synthetic', 'tiny', a.reps, device), a.reps)
    if not a.skip_paper:
        report('paper (Swin-B / Swin-T, random weights, 16 frames of 224², log-mel 64×201)',
               bench('epic_kitchens', 'paper', a.paper_reps, device), a.paper_reps)


if __name__ == '__main__':
    main()

"""Speed of the batched OTAM (m2df.matching.otam_distance) against a loop-over-both-time-axes implementation.

The baseline follows the structure of the authors' code (TRX / CLIP-FSAR / CLIP-M²DF `OTAM_cum_dist`): a Python loop over
the query frames and, inside it, over the padded support frames, every step vectorised over queries × classes. Both run
the same bidirectional distance on the same features of one training episode (25 queries × 5 classes, D = 1024) and
the figures of one run are printed: best and median wall time of the forward pass and of forward + backward, and the
ratios, for the alignment alone (from a precomputed distance tensor) and from the features (frame distances included).

    python tests/benchmarks/bench_otam.py [--repeats 20] [--device cpu] [--threads N]
"""
import argparse, os, statistics, time
import torch
from m2df.matching import frame_distances, otam_distance, otam_cumulative


def loop_otam_cumulative(d, lam):
    "OTAM(query→support) with a Python loop over both time axes, each cell one Q×N-vectorised step (paper recurrence)."
    Tq, Ts = d.shape[-2:]
    zero = d.new_zeros(d.shape[:-2])
    cell = lambda i, j: d[..., i, j - 1] if 1 <= j <= Ts else zero     # padded column j of row i
    soft = lambda *xs: -lam * torch.logsumexp(torch.stack(xs, -1) / -lam, -1)
    prev = [zero]
    for j in range(1, Ts + 2): prev.append(prev[-1] + cell(0, j))
    for i in range(1, Tq):
        row = [prev[0]]                                                  # padded first column: only the vertical step
        for j in range(1, Ts + 1): row.append(cell(i, j) + soft(prev[j - 1], row[j - 1]))
        row.append(soft(prev[Ts], row[Ts], prev[Ts + 1]))                # padded last column (adds a zero)
        prev = row
    return prev[-1]


def loop_otam_distance(q, s, lam):
    "Bidirectional OTAM with the loop baseline."
    d = frame_distances(q, s)
    return loop_otam_cumulative(d, lam) + loop_otam_cumulative(d.transpose(-1, -2), lam)


def timed(fn, repeats, device):
    "(best, median) seconds of `fn()` over `repeats` runs after two warm-up runs."
    sync = (lambda: torch.cuda.synchronize()) if device.type == 'cuda' else (lambda: None)
    for _ in range(2): fn(); sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=20)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    ap.add_argument('--queries', type=int, default=25)
    ap.add_argument('--classes', type=int, default=5)
    ap.add_argument('--dim', type=int, default=1024)
    ap.add_argument('--lam', type=float, default=0.5)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    print(f'torch {torch.__version__}, device {dev}, CPU threads {torch.get_num_threads()}, '
          f'episode {a.queries} queries x {a.classes} classes, D={a.dim}, lambda={a.lam}, bidirectional; '
          f'best (median) of {a.repeats} runs')
    if dev.type == 'cpu' and hasattr(os, 'getloadavg'):
        print(f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a loaded machine stalls multi-threaded '
              f'ops; --threads 1 gives steadier figures there)')
    print(f'{"T":>3} {"input":<9} {"pass":<17} {"loop ms":>17} {"batched ms":>17} {"speed-up":>15}')
    for T in (8, 16):
        g = torch.Generator().manual_seed(T)
        q = torch.randn(a.queries, T, a.dim, generator=g).to(dev).requires_grad_()
        s = torch.randn(a.classes, T, a.dim, generator=g).to(dev).requires_grad_()
        d = frame_distances(q, s).detach().requires_grad_()
        ref, got = loop_otam_distance(q, s, a.lam), otam_distance(q, s, a.lam)
        err = (ref - got).abs().max().item()
        assert err < 1e-4, f'batched and loop OTAM disagree by {err}'
        loop_d = lambda: loop_otam_cumulative(d, a.lam) + loop_otam_cumulative(d.transpose(-1, -2), a.lam)
        bat_d = lambda: otam_cumulative(torch.stack([d, d.transpose(-1, -2)]), a.lam).sum(0)
        loop_f = lambda: loop_otam_distance(q, s, a.lam)
        bat_f = lambda: otam_distance(q, s, a.lam)
        for inp, fl, fb in (('distances', loop_d, bat_d), ('features', loop_f, bat_f)):
            with torch.no_grad():
                res = [('forward', timed(fl, a.repeats, dev), timed(fb, a.repeats, dev))]
            res.append(('forward+backward', timed(lambda: fl().sum().backward(), a.repeats, dev),
                        timed(lambda: fb().sum().backward(), a.repeats, dev)))
            for name, tl, tb in res:
                print(f'{T:>3} {inp:<9} {name:<17} {tl[0] * 1e3:>7.2f} ({tl[1] * 1e3:>7.2f}) {tb[0] * 1e3:>7.2f} ({tb[1] * 1e3:>7.2f})'
                      f' {tl[0] / tb[0]:>6.1f}x ({tl[1] / tb[1]:>5.1f}x)')
        print(f'{"":>3} max |loop - batched| = {err:.1e}')


if __name__ == '__main__':
    main()

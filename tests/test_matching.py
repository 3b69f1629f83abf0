"Tests of m2df.matching: OTAM against a cell-by-cell dynamic programme, its properties, the baseline and the fusion."
import itertools, math
import pytest
import torch
import torch.nn.functional as F
from m2df.matching import (OTAM_VARIANTS, frame_distances, otam_cumulative, otam_distance, mean_cosine_distance,
                           fuse_views)


def softmin(values, lam):
    "−λ log Σ exp(−v/λ) of Python floats (shifted by the minimum so that small λ does not underflow)."
    m = min(values)
    return m - lam * math.log(sum(math.exp(-(v - m) / lam) for v in values))


def otam_plain(d, lam, variant='paper', hard=False):
    "OTAM(rows→columns) of one Tq×Ts matrix, one cell at a time with nested loops over i and j (Cao et al., padded)."
    Tq, Ts = len(d), len(d[0])
    dp = [[0.0] + [float(x) for x in row] + [0.0] for row in d]   # one zero column on each side
    agg = min if hard else (lambda vs: softmin(vs, lam))
    G = [[0.0] * (Ts + 2) for _ in range(Tq)]
    for j in range(1, Ts + 2):
        G[0][j] = G[0][j - 1] + dp[0][j]                             # first row: plain running sum
    for i in range(1, Tq):
        for j in range(Ts + 2):
            if j == 0:
                prev = [G[i - 1][j]]                                 # only the step down exists
            elif j == Ts + 1 or (variant == 'reference' and j == 1):
                prev = [G[i - 1][j - 1], G[i][j - 1], G[i - 1][j]]
            else:
                prev = [G[i - 1][j - 1], G[i][j - 1]]
            G[i][j] = dp[i][j] + agg(prev)
    return G[Tq - 1][Ts + 1]


def plain_distance_matrix(q, s, lam, bidirectional=True, variant='paper', hard=False):
    "Q×N OTAM distances, pair by pair, from frame distances computed one cosine at a time."
    out = torch.zeros(q.shape[0], s.shape[0], dtype=torch.float64)
    for a in range(q.shape[0]):
        for c in range(s.shape[0]):
            d = [[1 - F.cosine_similarity(q[a, i].double(), s[c, j].double(), dim=0).item()
                  for j in range(s.shape[1])] for i in range(q.shape[1])]
            v = otam_plain(d, lam, variant, hard)
            if bidirectional: v += otam_plain([list(r) for r in zip(*d)], lam, variant, hard)
            out[a, c] = v
    return out


@pytest.mark.parametrize('T', [3, 5, 8, 16])
@pytest.mark.parametrize('Q,N', [(1, 1), (2, 5), (4, 3)])
def test_otam_matches_cell_by_cell_dp(T, Q, N):
    g = torch.Generator().manual_seed(100 * T + 10 * Q + N)
    q, s = torch.randn(Q, T, 24, generator=g), torch.randn(N, T, 24, generator=g)
    for bidirectional in (False, True):
        want = plain_distance_matrix(q, s, 0.5, bidirectional)
        torch.testing.assert_close(otam_distance(q.double(), s.double(), 0.5, bidirectional), want, atol=1e-5, rtol=0)
        got32 = otam_distance(q, s, 0.5, bidirectional)
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32.double(), want, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize('variant', OTAM_VARIANTS)
@pytest.mark.parametrize('Tq,Ts', [(1, 4), (4, 1), (3, 7), (9, 4), (2, 2)])
@pytest.mark.parametrize('lam', [0.5, 0.1, 2.0])
def test_otam_cumulative_any_shape_and_variant(variant, Tq, Ts, lam):
    g = torch.Generator().manual_seed(Tq * 31 + Ts)
    d = 2 * torch.rand(3, 2, Tq, Ts, generator=g, dtype=torch.float64)
    got = otam_cumulative(d, lam, variant)
    assert got.shape == (3, 2)
    for a in range(3):
        for c in range(2):
            assert abs(got[a, c].item() - otam_plain(d[a, c].tolist(), lam, variant)) < 1e-9


def test_unequal_lengths_bidirectional():
    g = torch.Generator().manual_seed(1)
    q, s = torch.randn(3, 6, 16, generator=g), torch.randn(4, 9, 16, generator=g)
    torch.testing.assert_close(otam_distance(q.double(), s.double()), plain_distance_matrix(q, s, 0.5), atol=1e-5, rtol=0)


def test_variants_differ_softly_and_agree_in_the_hard_limit():
    g = torch.Generator().manual_seed(2)
    d = 2 * torch.rand(5, 8, 8, generator=g, dtype=torch.float64)
    soft = [otam_cumulative(d, 0.5, v) for v in OTAM_VARIANTS]
    assert (soft[0] - soft[1]).abs().max() > 1e-3                     # the switch does something
    hard = [otam_cumulative(d, 1e-4, v) for v in OTAM_VARIANTS]
    torch.testing.assert_close(hard[0], hard[1], atol=1e-2, rtol=0)


def test_bidirectional_is_the_sum_of_both_directions():
    g = torch.Generator().manual_seed(3)
    q, s = torch.randn(6, 8, 32, generator=g), torch.randn(5, 8, 32, generator=g)
    one = otam_distance(q, s, bidirectional=False)
    back = otam_distance(s, q, bidirectional=False).T                  # class → query alignment
    torch.testing.assert_close(otam_distance(q, s, bidirectional=True), one + back, atol=1e-5, rtol=1e-6)
    assert not torch.allclose(one, back, atol=1e-3)                    # the two directions really differ
    d = frame_distances(q, s)
    torch.testing.assert_close(back, otam_cumulative(d.transpose(-1, -2)), atol=1e-5, rtol=1e-6)


def test_sequence_is_closer_to_itself_than_to_its_time_reverse():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 8, 64, generator=g).cumsum(1)                 # random walks: not symmetric in time
    classes = torch.cat([x, x.flip(1)])
    D = otam_distance(x, classes)
    assert (D[:, :10].diagonal() < D[:, 10:].diagonal()).all()
    assert (D.argmin(1) == torch.arange(10)).all()
    M = mean_cosine_distance(x, classes)                               # the order-blind baseline cannot tell
    torch.testing.assert_close(M[:, :10], M[:, 10:], atol=1e-5, rtol=0)


def test_small_lambda_approaches_hard_min_dtw():
    g = torch.Generator().manual_seed(5)
    d = 2 * torch.rand(4, 6, 7, generator=g, dtype=torch.float64)
    hard = torch.tensor([otam_plain(m.tolist(), None, hard=True) for m in d], dtype=torch.float64)
    prev_gap = None
    for lam in (0.5, 0.1, 0.01, 1e-3):
        soft = otam_cumulative(d, lam)
        steps = d.shape[-2] * (d.shape[-1] + 2)
        assert (soft <= hard + 1e-9).all()                             # a soft minimum never exceeds the minimum
        assert (soft >= hard - lam * math.log(3) * steps - 1e-9).all()
        gap = (hard - soft).max().item()
        if prev_gap is not None: assert gap < prev_gap
        prev_gap = gap
    assert prev_gap < 0.05


def test_gradients_are_finite_and_reach_both_inputs():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(5, 8, 32, generator=g).requires_grad_()
    s = torch.randn(4, 8, 32, generator=g).requires_grad_()
    otam_distance(q, s).sum().backward()
    for t in (q, s):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    d = (2 * torch.rand(3, 4, 8, 8, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: otam_cumulative(x, 0.5), (d,))
    assert torch.autograd.gradcheck(lambda x: otam_cumulative(x, 0.5, 'reference'), (d,))
    small = d.detach().requires_grad_()
    otam_cumulative(small, 1e-3).sum().backward()                     # tiny λ: still no inf/NaN
    assert torch.isfinite(small.grad).all()


def test_autocast_computes_in_float32():
    g = torch.Generator().manual_seed(7)
    q, s = torch.randn(4, 8, 32, generator=g), torch.randn(3, 8, 32, generator=g)
    want = otam_distance(q, s)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = otam_distance(q, s)
        got_half_inputs = otam_distance(q.bfloat16(), s.bfloat16())
    assert got.dtype == torch.float32 and got_half_inputs.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_half_inputs, want, atol=0.1, rtol=0.02)   # only the inputs were rounded


def test_frame_distances_and_mean_cosine():
    g = torch.Generator().manual_seed(8)
    q, s = torch.randn(3, 4, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    d = frame_distances(q, s)
    assert d.shape == (3, 2, 4, 6)
    for a, c, i, j in [(0, 0, 0, 0), (2, 1, 3, 5), (1, 0, 2, 4)]:
        assert abs(d[a, c, i, j].item() - (1 - F.cosine_similarity(q[a, i], s[c, j], dim=0).item())) < 1e-6
    m = mean_cosine_distance(q, s)
    assert m.shape == (3, 2)
    assert abs(m[2, 1].item() - (1 - F.cosine_similarity(q[2].mean(0), s[1].mean(0), dim=0).item())) < 1e-6


def test_fuse_views():
    g = torch.Generator().manual_seed(9)
    Dl, Dg = torch.rand(4, 5, generator=g), torch.rand(4, 5, generator=g)
    torch.testing.assert_close(fuse_views({'local': Dl, 'global': Dg}), -(Dl + Dg))
    torch.testing.assert_close(fuse_views({'local': Dl, 'global': Dg}, scale=20.), -20 * (Dl + Dg))
    torch.testing.assert_close(fuse_views({'raw': Dl}), -Dl)


@pytest.mark.parametrize('call,match', [
    (lambda: otam_distance(torch.randn(8, 32), torch.randn(5, 8, 32)), 'q must be'),
    (lambda: otam_distance(torch.randn(2, 8, 32), torch.randn(5, 8)), 's must be'),
    (lambda: otam_distance(torch.randn(2, 8, 32), torch.randn(5, 8, 16)), 'same feature width'),
    (lambda: otam_distance(torch.randn(2, 0, 32), torch.randn(5, 8, 32)), 'q has an empty'),
    (lambda: otam_distance(torch.randint(0, 3, (2, 8, 4)), torch.randn(5, 8, 4)), 'q must be a floating'),
    (lambda: otam_distance(torch.randn(2, 8, 32), torch.randn(5, 8, 32), lam=0.), 'lam must be'),
    (lambda: otam_distance(torch.randn(2, 8, 32), torch.randn(5, 8, 32), lam=-1), 'lam must be'),
    (lambda: otam_distance(torch.randn(2, 8, 32), torch.randn(5, 8, 32), variant='trx'), 'variant must be'),
    (lambda: otam_cumulative(torch.randn(8)), 'dists must be'),
    (lambda: mean_cosine_distance(torch.randn(2, 8, 32), torch.randn(5, 8, 16)), 'same feature width'),
    (lambda: fuse_views({}), 'non-empty'),
    (lambda: fuse_views([torch.rand(2, 3)]), 'dict'),
    (lambda: fuse_views({'local': torch.rand(2, 3), 'global': torch.rand(3, 2)}), 'one shape'),
    (lambda: fuse_views({'local': torch.rand(2, 3, 1, 1)}), '(Q, N)'),
])
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match.replace('(', r'\(').replace(')', r'\)')):
        call()


def test_frame_distances_with_eps_are_the_authors():
    "1 − ⟨x, y⟩ / (‖x‖‖y‖ + ε) for every pair of frames (the authors' cos_sim on the flattened frames)."
    torch.manual_seed(6)
    q, s = torch.randn(2, 3, 8), torch.randn(4, 5, 8)
    d = frame_distances(q, s, eps=0.01)
    assert d.shape == (2, 4, 3, 5)
    for a, c, i, j in itertools.product(range(2), range(4), range(3), range(5)):
        x, y = q[a, i].double(), s[c, j].double()
        assert abs(d[a, c, i, j].item() - (1 - (x @ y / (x.norm() * y.norm() + 0.01)).item())) < 1e-6
    D = otam_distance(q, s, variant='reference', eps=0.01)
    torch.testing.assert_close(D, otam_cumulative(d, 0.5, 'reference') + otam_cumulative(d.transpose(-1, -2), 0.5, 'reference'))
    assert (D - otam_distance(q, s, variant='reference')).abs().max() > 1e-4
    torch.testing.assert_close(frame_distances(q, s, eps=0.), frame_distances(q, s))

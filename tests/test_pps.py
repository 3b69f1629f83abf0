"Tests of m2df.pps: the Probability Prompt Selector, support prompts and the zero prompt."
import math

import pytest
import torch
import torch.nn.functional as F

from m2df.config import M2DFConfig
from m2df.pps import ProbabilityPromptSelector, pps_scores, support_prompts, zero_prompts


def plain_probs(frames, text, k, tau):
    "π computed with Python loops, straight from the equations."
    Q, T, _ = frames.shape
    N = text.shape[0]
    kk = min(k, T)
    s = torch.zeros(Q, N, dtype=torch.float64)
    for q in range(Q):
        for c in range(N):
            sims = sorted((F.cosine_similarity(frames[q, t].double(), text[c].double(), dim=0).item() for t in range(T)),
                          reverse=True)
            s[q, c] = sum(sims[:kk]) / kk
    z = [[math.exp(tau * (s[q, c] - s[q].max()).item()) for c in range(N)] for q in range(Q)]
    return torch.tensor([[v / sum(row) for v in row] for row in z], dtype=torch.float64)


def noisy_queries(text, classes, T, noise, gen):
    "Queries whose T frames are the text direction of the given classes plus Gaussian noise."
    return text[classes][:, None] + noise * torch.randn(len(classes), T, text.shape[1], generator=gen)


def test_defaults_from_config():
    pps = ProbabilityPromptSelector()
    assert (pps.topk, pps.tau) == (M2DFConfig.pps_topk, M2DFConfig.pps_tau) == (4, 200.)
    assert list(pps.parameters()) == [] and list(pps.buffers()) == []


@pytest.mark.parametrize('Q,T,N,k,tau', [(3, 8, 5, 4, 200.), (2, 3, 4, 4, 50.), (4, 1, 3, 2, 10.), (1, 16, 10, 7, 1.)])
def test_probs_match_plain_equations(Q, T, N, k, tau):
    g = torch.Generator().manual_seed(Q * 100 + T)
    frames, text = torch.randn(Q, T, 24, generator=g), torch.randn(N, 24, generator=g)
    pps = ProbabilityPromptSelector(k, tau)
    _, pi = pps(frames, text, 'expectation')
    assert pi.shape == (Q, N) and pi.dtype == torch.float32
    torch.testing.assert_close(pi.sum(-1), torch.ones(Q))
    torch.testing.assert_close(pi.double(), plain_probs(frames, text, k, tau), atol=2e-4, rtol=1e-3)


def test_k_larger_than_T_uses_all_frames():
    g = torch.Generator().manual_seed(0)
    frames, text = torch.randn(2, 3, 16, generator=g), torch.randn(4, 16, generator=g)
    cos = F.cosine_similarity(frames[:, :, None], text[None, None], dim=-1)      # Q×T×N
    torch.testing.assert_close(pps_scores(frames, text, topk=4), cos.mean(1))
    torch.testing.assert_close(pps_scores(frames, text, topk=100), cos.mean(1))
    torch.testing.assert_close(pps_scores(frames, text, topk=1), cos.max(1).values)


def test_expectation_is_weighted_sum():
    g = torch.Generator().manual_seed(1)
    frames, text = torch.randn(5, 8, 32, generator=g), torch.randn(6, 32, generator=g)
    p, pi = ProbabilityPromptSelector(4, 5.)(frames, text, 'expectation')
    plain = torch.zeros(5, 32)
    for q in range(5):
        for c in range(6):
            plain[q] += pi[q, c] * text[c]
    torch.testing.assert_close(p, plain)
    assert p.shape == (5, 32)


def test_argmax_picks_top_class():
    g = torch.Generator().manual_seed(2)
    frames, text = torch.randn(7, 8, 32, generator=g), torch.randn(5, 32, generator=g)
    p, pi = ProbabilityPromptSelector()(frames, text, 'argmax')
    assert torch.equal(p, text[pi.argmax(-1)])


@pytest.mark.parametrize('T', [1, 2, 8, 13])
def test_selects_class_of_noisy_frames(T):
    g = torch.Generator().manual_seed(T)
    text = torch.randn(5, 64, generator=g)
    classes = [4, 0, 2, 2, 1, 3]
    frames = noisy_queries(text, classes, T, 0.5, g)
    for mode in ('argmax', 'sample', 'expectation'):
        p, pi = ProbabilityPromptSelector()(frames, text, mode)
        assert pi.argmax(-1).tolist() == classes
        assert torch.cdist(p, text).argmin(-1).tolist() == classes


def test_sample_peaked_returns_top_class():
    g = torch.Generator().manual_seed(3)
    text = torch.randn(5, 32, generator=g)
    frames = noisy_queries(text, [1, 3], 8, 0.1, g)
    pps = ProbabilityPromptSelector()
    for _ in range(30):
        p, pi = pps(frames, text, 'sample')
        assert torch.equal(p, text[[1, 3]])
    assert (pi.max(-1).values > 0.999).all()


def test_sample_flat_draws_from_pi():
    g = torch.Generator().manual_seed(4)
    text = torch.randn(4, 32, generator=g)
    frames = noisy_queries(text, [2], 8, 1.0, g).expand(2000, -1, -1)
    pps = ProbabilityPromptSelector(4, 3.)                       # a moderately flat π, not uniform
    p, pi = pps(frames, text, 'sample', generator=torch.Generator().manual_seed(0))
    picked = torch.cdist(p, text).argmin(-1)
    assert set(picked.tolist()) == {0, 1, 2, 3}
    freq = torch.bincount(picked, minlength=4).float() / len(picked)
    torch.testing.assert_close(freq, pi[0], atol=0.04, rtol=0)   # ~4 standard errors
    # reproducible with a seeded generator, and with the global RNG after manual_seed
    again, _ = pps(frames, text, 'sample', generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, p)
    torch.manual_seed(5); a, _ = pps(frames, text, 'sample')
    torch.manual_seed(5); b, _ = pps(frames, text, 'sample')
    assert torch.equal(a, b) and not torch.equal(a, p)


def test_gradients():
    g = torch.Generator().manual_seed(6)
    text = torch.randn(5, 32, generator=g)
    frames = torch.randn(4, 8, 32, generator=g, requires_grad=True)
    p, pi = ProbabilityPromptSelector(4, 10.)(frames, text, 'expectation')
    p.square().sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0
    frames.grad = None
    p, pi = ProbabilityPromptSelector(4, 10.)(frames, text, 'sample')
    assert not p.requires_grad and pi.requires_grad            # the drawn prompt is a constant, π is not
    (pi * torch.arange(5.)).sum().backward()
    assert frames.grad.abs().sum() > 0


def test_autocast_keeps_float32():
    g = torch.Generator().manual_seed(7)
    text = torch.randn(5, 64, generator=g)
    frames = noisy_queries(text, [0, 1, 2], 8, 2.0, g)
    pps = ProbabilityPromptSelector()
    p32, pi32 = pps(frames, text, 'expectation')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        p, pi = pps(frames.bfloat16(), text, 'expectation')
    assert p.dtype == pi.dtype == torch.float32
    # frames rounded to bfloat16 are the only difference; the similarities themselves are not rounded
    p_ref, pi_ref = pps(frames.bfloat16().float(), text, 'expectation')
    torch.testing.assert_close(pi, pi_ref)
    torch.testing.assert_close(p, p_ref)


def test_bad_inputs():
    pps = ProbabilityPromptSelector()
    f, e = torch.randn(2, 8, 16), torch.randn(3, 16)
    with pytest.raises(ValueError, match='choose from'):
        pps(f, e, 'mean')
    with pytest.raises(ValueError, match='Q×T×D'):
        pps(f[0], e, 'expectation')
    with pytest.raises(ValueError, match='N×D'):
        pps(f, e[0], 'expectation')
    with pytest.raises(ValueError, match='D=16'):
        pps(f, torch.randn(3, 8), 'expectation')
    with pytest.raises(ValueError, match='pps_topk'):
        ProbabilityPromptSelector(topk=0)
    with pytest.raises(ValueError, match='pps_tau'):
        ProbabilityPromptSelector(tau=0.)


def test_support_and_zero_prompts():
    e = torch.randn(5, 16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    sp = support_prompts(e, labels)
    assert sp.shape == (10, 16)
    for i, y in enumerate(labels.tolist()):
        assert torch.equal(sp[i], e[y])
    assert torch.equal(support_prompts(e, [4, 2]), e[[4, 2]])
    with pytest.raises(IndexError, match='0..4'):
        support_prompts(e, torch.tensor([1, 5]))
    with pytest.raises(IndexError, match='0..4'):
        support_prompts(e, torch.tensor([-1]))
    z = zero_prompts(7, e.double())
    assert z.shape == (7, 16) and z.dtype == torch.float64 and not z.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_with_cpu_generator():
    text = torch.randn(5, 32, device='cuda')
    frames = torch.randn(3, 8, 32, device='cuda')
    p, pi = ProbabilityPromptSelector()(frames, text, 'sample', generator=torch.Generator().manual_seed(0))
    assert p.device.type == 'cuda' and pi.device.type == 'cuda'
    with torch.autocast('cuda', dtype=torch.bfloat16):
        p, pi = ProbabilityPromptSelector()(frames, text, 'expectation')
    assert p.dtype == torch.float32


def eps_cos_plain(x, y, eps):
    "The authors' cos_sim for one pair of vectors, in float64: ⟨x, y⟩ / (‖x‖‖y‖ + ε)."
    x, y = x.double(), y.double()
    return (x @ y / (x.norm() * y.norm() + eps)).item()


def test_cosine_with_eps_is_the_authors_cos_sim():
    from m2df.pps import cosine_similarity
    torch.manual_seed(3)
    x, y = torch.randn(4, 16), torch.randn(5, 16) * 0.2          # small norms: ε matters
    for eps in (0., 0.01, 0.5):
        got = cosine_similarity(x, y, eps)
        want = torch.tensor([[eps_cos_plain(a, b, eps) for b in y] for a in x], dtype=torch.float64)
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    assert (cosine_similarity(x, y, 0.01) - cosine_similarity(x, y, 0.)).abs().max() > 1e-3


def test_pps_scores_use_eps():
    torch.manual_seed(4)
    f, e = torch.randn(3, 6, 16), torch.randn(4, 16)
    got = pps_scores(f, e, topk=3, eps=0.01)
    for q in range(3):
        for c in range(4):
            sims = sorted((eps_cos_plain(f[q, t], e[c], 0.01) for t in range(6)), reverse=True)
            assert abs(got[q, c].item() - sum(sims[:3]) / 3) < 1e-6
    assert (got - pps_scores(f, e, topk=3)).abs().max() > 1e-5
    pps = ProbabilityPromptSelector(eps=0.01)
    torch.testing.assert_close(pps.probs(f, e), torch.softmax(200. * pps_scores(f, e, 4, 0.01), -1))
    with pytest.raises(ValueError, match='cos_eps'): ProbabilityPromptSelector(eps=-0.1)


def test_sample_draws_can_be_replayed():
    "`draw` is the only source of the sampled classes: overriding it replays given draws."
    torch.manual_seed(5)
    f, e = torch.randn(4, 8, 16), torch.randn(5, 16)
    pps = ProbabilityPromptSelector(tau=1e-3)                      # flat π: draws are spread
    pps.draw = lambda pi, generator=None: torch.tensor([4, 0, 2, 2])
    p, _ = pps(f, e, 'sample')
    torch.testing.assert_close(p, e[[4, 0, 2, 2]])
    p, _ = pps(f, e, 'expectation')                                # the other modes do not draw
    assert p.shape == (4, 16)

"Tests of m2df.distill: the distillation condition's truth table, the loss against a plain computation, gradients."
import itertools, math
import pytest
import torch
from m2df.distill import distillation_masks, mutual_distillation_loss, confidence, visual_log_probs

CONDITIONS = ('tv', 't', 'v', 'none')


def expected_roles(vis, txt, condition):
    "Who teaches for one query, from the comparisons local-vs-global ('>', '=', '<') written out per the spec."
    vis_l, txt_l = vis in '>=', txt in '>='            # ties count for the local view
    if condition == 'tv': return (vis_l and txt_l, not vis_l and not txt_l)
    if condition == 'v': return (vis_l, not vis_l)
    if condition == 't': return (txt_l, not txt_l)
    return (True, True)


@pytest.mark.parametrize('condition', CONDITIONS)
def test_condition_truth_table(condition):
    combos = list(itertools.product('><=', repeat=2))
    level = {'>': 0.8, '=': 0.5, '<': 0.2}
    a_l = torch.tensor([level[v] for v, _ in combos]); b_l = torch.tensor([level[t] for _, t in combos])
    a_g = torch.full((len(combos),), 0.5); b_g = torch.full((len(combos),), 0.5)
    l2g, g2l = distillation_masks(a_l, a_g, b_l, b_g, condition)
    assert l2g.dtype == torch.bool and g2l.dtype == torch.bool and l2g.shape == (len(combos),)
    for k, (v, t) in enumerate(combos):
        assert (bool(l2g[k]), bool(g2l[k])) == expected_roles(v, t, condition), (condition, v, t)


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def plain_loss(Dl, Dg, Tl, Tg, condition='tv', direction='both'):
    "The MVMD loss, query by query with Python floats."
    terms = {'l2g': [], 'g2l': []}
    for q in range(len(Dl)):
        pl, pg = softmax([-x for x in Dl[q]]), softmax([-x for x in Dg[q]])
        al, ag, bl, bg = max(pl), max(pg), max(softmax(Tl[q])), max(softmax(Tg[q]))
        vis = '>' if al > ag else ('=' if al == ag else '<')
        txt = '>' if bl > bg else ('=' if bl == bg else '<')
        l_teaches, g_teaches = expected_roles(vis, txt, condition)
        kl = lambda p, r: sum(pc * math.log(pc / rc) for pc, rc in zip(p, r))
        if l_teaches: terms['l2g'].append((al + bl, kl(pl, pg)))
        if g_teaches: terms['g2l'].append((ag + bg, kl(pg, pl)))
    used = ['l2g', 'g2l'] if direction == 'both' else [direction]
    return sum(sum(w * k for w, k in terms[d]) / sum(w for w, _ in terms[d]) for d in used if terms[d])


def episode(seed, Q=8, N=5):
    g = torch.Generator().manual_seed(seed)
    sharp = torch.rand(Q, 1, generator=g) * 4
    Dl = sharp * torch.randn(Q, N, generator=g, dtype=torch.float64)
    Dg = (4 - sharp) * torch.randn(Q, N, generator=g, dtype=torch.float64)
    Tl = 3 * torch.rand(Q, N, generator=g, dtype=torch.float64)
    Tg = 3 * torch.rand(Q, N, generator=g, dtype=torch.float64)
    return Dl, Dg, Tl, Tg


@pytest.mark.parametrize('condition', CONDITIONS)
@pytest.mark.parametrize('direction', ['both', 'l2g', 'g2l'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_loss_matches_plain_computation(condition, direction, seed):
    Dl, Dg, Tl, Tg = episode(seed)
    loss, info = mutual_distillation_loss(Dl, Dg, Tl, Tg, condition, direction)
    want = plain_loss(Dl.tolist(), Dg.tolist(), Tl.tolist(), Tg.tolist(), condition, direction)
    assert abs(loss.item() - want) < 1e-9
    assert torch.isfinite(loss)


def test_direction_switches_select_their_terms():
    Dl, Dg, Tl, Tg = episode(3)
    both, info = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'tv', 'both')
    l2g, info_l = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'tv', 'l2g')
    g2l, info_g = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'tv', 'g2l')
    assert info['n_l2g'] > 0 and info['n_g2l'] > 0
    assert l2g.item() > 0 and g2l.item() > 0
    torch.testing.assert_close(both, l2g + g2l)
    torch.testing.assert_close(l2g, info['loss_l2g']); torch.testing.assert_close(g2l, info['loss_g2l'])
    assert info_l['n_g2l'] == 0 and info_l['n_l2g'] == info['n_l2g']
    assert info_g['n_l2g'] == 0 and info_g['n_g2l'] == info['n_g2l']
    assert info_l['loss_g2l'] == 0 and info_g['loss_l2g'] == 0


def disagreeing_episode():
    "Queries 0, 1: local more confident on both sides; 2, 3: global on both; 4, 5: the comparisons disagree."
    g = torch.Generator().manual_seed(11)
    N = 5
    sharpness = torch.tensor([3., 3., .3, .3, 3., .3]).unsqueeze(1)
    Dl = sharpness * torch.randn(6, N, generator=g, dtype=torch.float64)
    Dg = (3.3 - sharpness) * torch.randn(6, N, generator=g, dtype=torch.float64)
    text_sharp = torch.tensor([3., 3., .3, .3, .3, 3.]).unsqueeze(1)     # 4: vis local, txt global; 5: the reverse
    Tl = text_sharp * torch.rand(6, N, generator=g, dtype=torch.float64)
    Tg = (3.3 - text_sharp) * torch.rand(6, N, generator=g, dtype=torch.float64)
    return Dl, Dg, Tl, Tg


def roles(Dl, Dg, Tl, Tg, condition='tv'):
    return distillation_masks(confidence(-Dl), confidence(-Dg), confidence(Tl), confidence(Tg), condition)


def test_disagreeing_queries_contribute_nothing_under_tv():
    Dl, Dg, Tl, Tg = disagreeing_episode()
    l2g, g2l = roles(Dl, Dg, Tl, Tg)
    assert l2g.tolist() == [True, True, False, False, False, False]
    assert g2l.tolist() == [False, False, True, True, False, False]
    base = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'tv')[0]
    g = torch.Generator().manual_seed(12)
    for _ in range(5):                               # new random scores for the two disagreeing queries ...
        Dl2, Dg2, Tl2, Tg2 = Dl.clone(), Dg.clone(), Tl.clone(), Tg.clone()
        Dl2[4] = 3 * torch.randn(5, generator=g, dtype=torch.float64); Dg2[4] = 0.1 * torch.randn(5, generator=g, dtype=torch.float64)
        Tl2[4] = 0.1 * torch.rand(5, generator=g, dtype=torch.float64); Tg2[4] = 3 * torch.rand(5, generator=g, dtype=torch.float64)
        Dl2[5] = 0.1 * torch.randn(5, generator=g, dtype=torch.float64); Dg2[5] = 3 * torch.randn(5, generator=g, dtype=torch.float64)
        Tl2[5] = 3 * torch.rand(5, generator=g, dtype=torch.float64); Tg2[5] = 0.1 * torch.rand(5, generator=g, dtype=torch.float64)
        r = roles(Dl2, Dg2, Tl2, Tg2)
        assert not r[0][4:].any() and not r[1][4:].any()       # ... that still disagree
        assert mutual_distillation_loss(Dl2, Dg2, Tl2, Tg2, 'tv')[0].item() == base.item()
    Dl3 = Dl.clone(); Dl3[0] = 1.5 * Dl3[0]           # a distilled query does count (so the test can fail)
    assert roles(Dl3, Dg, Tl, Tg)[0][0]
    assert mutual_distillation_loss(Dl3, Dg, Tl, Tg, 'tv')[0].item() != base.item()
    # with one comparison (or none) the same queries are distilled
    for cond in ('t', 'v', 'none'):
        r = roles(Dl, Dg, Tl, Tg, cond)
        assert (r[0][4:] | r[1][4:]).all()


def test_detached_teacher_gets_no_gradient():
    Dl, Dg, Tl, Tg = disagreeing_episode()
    Dl, Dg = Dl.requires_grad_(), Dg.requires_grad_()
    Tl, Tg = Tl.requires_grad_(), Tg.requires_grad_()
    loss, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'tv', 'both', detach_teacher=True)
    gl, gg, gtl, gtg = torch.autograd.grad(loss, (Dl, Dg, Tl, Tg), allow_unused=True)
    assert gl[:2].abs().sum() == 0 and gg[2:4].abs().sum() == 0            # the teacher's rows
    assert gl[2:4].abs().sum() > 0 and gg[:2].abs().sum() > 0              # the student's rows
    assert gl[4:].abs().sum() == 0 and gg[4:].abs().sum() == 0            # undistilled queries
    assert gtl is None and gtg is None                                     # text only selects and weighs
    # a view that only teaches (direction l2g) gets no gradient at all
    loss, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'tv', 'l2g', detach_teacher=True)
    gl, gg = torch.autograd.grad(loss, (Dl, Dg), allow_unused=True)
    assert gl is None or gl.abs().sum() == 0
    assert gg[:2].abs().sum() > 0


def test_undetached_teacher_gets_gradient():
    Dl, Dg, Tl, Tg = disagreeing_episode()
    Dl, Dg = Dl.requires_grad_(), Dg.requires_grad_()
    loss, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'tv', 'l2g', detach_teacher=False)
    gl, gg = torch.autograd.grad(loss, (Dl, Dg))
    assert gl[:2].abs().sum() > 0 and gg[:2].abs().sum() > 0                # both sides of the distilled queries
    assert gl[2:].abs().sum() == 0 and gg[2:].abs().sum() == 0


def test_weights_carry_no_gradient():
    "The gradient is that of Σ w·KL / Σ w with the weights held constant."
    Dl, Dg, Tl, Tg = episode(4)
    Dg = Dg.requires_grad_()
    loss, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'none', 'l2g')
    (got,) = torch.autograd.grad(loss, Dg)
    w = (confidence(-Dl) + confidence(Tl)).detach()
    pl = torch.softmax(-Dl, -1)
    kl = (pl * (pl.log() - torch.log_softmax(-Dg, -1))).sum(-1)
    (want,) = torch.autograd.grad((w * kl).sum() / w.sum(), Dg)
    torch.testing.assert_close(got, want)


def test_agreeing_views_give_zero_loss():
    Dl, _, Tl, Tg = episode(5)
    for cond in CONDITIONS:
        loss, _ = mutual_distillation_loss(Dl, Dl.clone(), Tl, Tg, cond)
        assert abs(loss.item()) < 1e-12
    Dl2 = Dl + 7.0                                    # a constant shift does not change the distribution
    assert abs(mutual_distillation_loss(Dl, Dl2, Tl, Tg, 'none')[0].item()) < 1e-9


def test_no_qualifying_query_is_finite_zero():
    Dl, Dg, Tl, Tg = disagreeing_episode()
    keep = [4, 5]                                     # only the disagreeing queries
    Dl, Dg = Dl[keep].requires_grad_(), Dg[keep].requires_grad_()
    loss, info = mutual_distillation_loss(Dl, Dg, Tl[keep], Tg[keep], 'tv')
    assert loss.item() == 0 and info['n_l2g'] == 0 and info['n_g2l'] == 0 and info['n_skipped'] == 2
    loss.backward()
    for t in (Dl, Dg):
        assert t.grad is None or (torch.isfinite(t.grad).all() and t.grad.abs().sum() == 0)
    loss, _ = mutual_distillation_loss(Dl.detach(), Dg.detach(), Tl[keep], Tg[keep], 'tv', detach_teacher=False)
    assert loss.item() == 0


def test_info_reports_counts_and_confidences():
    Dl, Dg, Tl, Tg = disagreeing_episode()
    _, info = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'tv')
    assert (int(info['n_l2g']), int(info['n_g2l']), int(info['n_skipped'])) == (2, 2, 2)
    torch.testing.assert_close(info['a_local'], torch.softmax(-Dl, -1).amax(-1).mean())
    torch.testing.assert_close(info['b_global'], torch.softmax(Tg, -1).amax(-1).mean())
    assert all(not v.requires_grad for v in info.values())
    _, info = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'none')
    assert (int(info['n_l2g']), int(info['n_g2l']), int(info['n_skipped'])) == (6, 6, 0)


def test_half_precision_inputs_compute_in_float32():
    Dl, Dg, Tl, Tg = (x.float() for x in episode(6))
    want, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    assert visual_log_probs(Dl.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize('call,match', [
    (lambda d: mutual_distillation_loss(*d, condition='vt'), 'condition must be'),
    (lambda d: mutual_distillation_loss(*d, direction='l2l'), 'direction must be'),
    (lambda d: mutual_distillation_loss(d[0], d[1][:3], d[2], d[3]), 'one shape'),
    (lambda d: mutual_distillation_loss(d[0][0], d[1], d[2], d[3]), 'dist_local must be'),
    (lambda d: mutual_distillation_loss(d[0], d[1], d[2].long(), d[3]), 'text_local must be a floating'),
    (lambda d: distillation_masks(torch.rand(3), torch.rand(3), torch.rand(4), torch.rand(3), 'tv'), 'one shape'),
    (lambda d: distillation_masks(*(torch.rand(3),) * 4, 'tvx'), 'condition must be'),
])
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call(episode(7))


def test_weights_in_the_graph():
    "detach_confidence=False (the authors' code): same value, gradient of Σ w·KL / Σ w with w = a + b differentiable."
    Dl, Dg, Tl, Tg = episode(7)
    Dl, Dg, Tl = Dl.requires_grad_(), Dg.requires_grad_(), Tl.requires_grad_()
    loss, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'none', 'l2g', detach_teacher=False, detach_confidence=False)
    got = torch.autograd.grad(loss, (Dl, Dg, Tl))
    pl = torch.softmax(-Dl, -1)
    w = pl.amax(-1) + torch.softmax(Tl, -1).amax(-1)
    kl = (pl * (pl.log() - torch.log_softmax(-Dg, -1))).sum(-1)
    want_loss = (w * kl).sum() / w.sum()
    want = torch.autograd.grad(want_loss, (Dl, Dg, Tl))
    torch.testing.assert_close(loss, want_loss)
    for g, h in zip(got, want): torch.testing.assert_close(g, h)
    assert got[2].abs().sum() > 0                                  # the text logits receive gradient through b
    detached, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'none', 'l2g', detach_teacher=False)
    assert torch.autograd.grad(detached, Tl, allow_unused=True)[0] is None or \
        torch.autograd.grad(detached, Tl, allow_unused=True)[0].abs().sum() == 0


@pytest.mark.parametrize('direction', ('both', 'l2g', 'g2l'))
def test_none_condition_sum(direction):
    "distill_none_reduction='sum' (the authors' code): unweighted KL summed over every query, in each kept direction."
    Dl, Dg, Tl, Tg = episode(8)
    pl, pg = torch.softmax(-Dl, -1), torch.softmax(-Dg, -1)
    kl = lambda p, r: (p * (p.log() - r.log())).sum(-1).sum()
    want = {'both': kl(pl, pg) + kl(pg, pl), 'l2g': kl(pl, pg), 'g2l': kl(pg, pl)}[direction]
    loss, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, 'none', direction, none_reduction='sum')
    torch.testing.assert_close(loss, want)
    # the other conditions ignore it
    for cond in ('tv', 't', 'v'):
        a, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, cond, direction, none_reduction='sum')
        b, _ = mutual_distillation_loss(Dl, Dg, Tl, Tg, cond, direction)
        assert a.item() == b.item()
    with pytest.raises(ValueError, match='distill_none_reduction'):
        mutual_distillation_loss(Dl, Dg, Tl, Tg, 'none', direction, none_reduction='mean')

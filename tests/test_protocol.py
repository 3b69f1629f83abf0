"""Tests of the training protocol: the loss CE_sum + λ·MVMD, gradient accumulation, support and query videos kept apart in
every episode, the query prompts of PPS, the model following each switch and preset, and model selection.

They are written against breaks that the module tests do not see (the λ curve would come out flat, the CE averaged
instead of summed, accumulation ignored, a query that is one of the support videos, the query prompt replaced by zeros, a
switch that the model never reads); `tests/mutate.py` applies those breaks, and many others, one at a time to a copy of
the package and reports any that no test notices."""
import copy, itertools, json

import pytest
import torch
import torch.nn.functional as F

from conftest import real_splits_dir, tiny
import m2df.learner as L
from m2df.config import BENCHMARK_PRESETS, M2DFConfig, make_config
from m2df.distill import mutual_distillation_loss
from m2df.episodes import EpisodeSampler, benchmark_split, clip_transform, episode_loader
from m2df.evaluate import episodes_of, weights_digest
from m2df.fusion import class_prototypes
from m2df.learner import Learner
from m2df.matching import mean_cosine_distance, otam_distance
from m2df.model import M2DF, m2df_loss
from m2df.runs import load_checkpoint
from m2df.splits import SPLITS, SSV2_LABELS, load_split
from m2df.temporal import GlobalTemporalContext, LocalTemporalContext

# No dropout and expectation prompts in training: the forward pass in training mode is then a function of the weights and
# the episode alone, so a hand computation sees exactly what the learner saw.
DETERMINISTIC = dict(gtce_dropout=0., fusion_attn_dropout=0., fusion_ffn_dropout=0., pps_train_mode='expectation')
REAL = ['ucf101', 'hmdb51', 'kinetics100', 'kinetics100_clipfsar', 'ssv2_small', 'ssv2_full']


def random_episode(model, way=5, shot=1, query=3, frames=4, seed=0):
    "Frame features, labels and class texts of a made-up episode (the model accepts features in place of clips)."
    g = torch.Generator().manual_seed(seed)
    D = model.dim
    fs, fq = torch.randn(way * shot, frames, D, generator=g), torch.randn(way * query, frames, D, generator=g)
    ys, yq = torch.arange(way).repeat_interleave(shot), torch.arange(way).repeat_interleave(query)
    return fs, fq, ys, yq, torch.randn(way, D, generator=g)


@pytest.fixture(scope='module')
def head():
    "A tiny model (its backbone is not used: the episodes below are made of frame features)."
    torch.manual_seed(0)
    return M2DF(tiny(**DETERMINISTIC))


# ---------------------------------------------------------------- 1. the loss: CE summed over queries, + λ·MVMD

def summed_ce(logits, y) -> torch.Tensor:
    "Σ_q −log softmax(logits_q)[y_q], in float64."
    return -F.log_softmax(logits.double(), -1)[torch.arange(len(y)), y].sum()


def test_loss_is_summed_ce_plus_lambda_times_mvmd(head):
    fs, fq, ys, yq, text = random_episode(head, query=3)
    out = head.train()(fs, fq, ys, text)
    mvmd = out['distill_loss'].double()
    assert mvmd > 1e-4, 'the test needs a distillation loss well above rounding'
    ce = summed_ce(out['logits'], yq)
    assert len(yq) == 15
    for lam in (0., 0.5, 1., 2.5, 10.):
        loss, parts = m2df_loss(out, yq, head.cfg.replace(lam=lam))
        assert loss.dim() == 0
        # the authors' reduction: a sum over the episode's queries (a mean would be 15 times smaller)
        torch.testing.assert_close(parts['ce'].double(), ce, rtol=1e-5, atol=0)
        torch.testing.assert_close(loss.double(), ce + lam * mvmd, rtol=1e-5, atol=0, msg=f'lambda = {lam}')
        if lam: torch.testing.assert_close(parts['distill'].double(), mvmd)
    # without distillation the loss is the summed CE whatever λ says
    no_mvmd = M2DF(head.cfg.replace(distill=False), backbone=head.backbone)
    no_mvmd.load_state_dict(head.state_dict())
    o = no_mvmd.train()(fs, fq, ys, text)
    assert o['distill_loss'] is None
    loss, parts = m2df_loss(o, yq, no_mvmd.cfg.replace(lam=3.))
    torch.testing.assert_close(loss.double(), summed_ce(o['logits'], yq), rtol=1e-5, atol=0)
    assert 'distill' not in parts


def test_cross_entropy_is_a_sum_over_queries_not_a_mean():
    "With logits made by hand: Q queries of one wrong-ish class each cost Q times one query."
    cfg = tiny(distill=False)
    logits = torch.tensor([[2., 0., -1.], [0.5, 0.5, 0.]] * 4)
    y = torch.tensor([1, 2] * 4)
    out = dict(logits=logits, distill_loss=None)
    loss, parts = m2df_loss(out, y, cfg)
    per_query = -F.log_softmax(logits.double(), -1)[torch.arange(8), y]
    assert float(loss) == pytest.approx(float(per_query.sum()), rel=1e-6)
    assert float(loss) == pytest.approx(8 * float(per_query.mean()), rel=1e-6)
    one, _ = m2df_loss(dict(logits=logits[:2], distill_loss=None), y[:2], cfg)
    assert float(loss) == pytest.approx(4 * float(one), rel=1e-6)            # 4 copies of the same 2 queries


def test_video_text_loss_enters_with_its_weight(head):
    fs, fq, ys, yq, text = random_episode(head, query=2)
    out = head.eval()(fs, fq, ys, text)
    base, _ = m2df_loss(out, yq, head.cfg.replace(lam_vt=0.), ys, text)
    for w in (0.5, 2.):
        loss, parts = m2df_loss(out, yq, head.cfg.replace(lam_vt=w), ys, text)
        assert parts['video_text'] > 1e-3
        torch.testing.assert_close(loss.double(), base.double() + w * parts['video_text'].double(), rtol=1e-5, atol=0)
    # a sum over the episode's videos: every video twice, twice the loss
    twice = dict(out, logits=out['logits'].repeat(2, 1), support_frames=out['support_frames'].repeat(2, 1, 1),
                 query_frames=out['query_frames'].repeat(2, 1, 1))
    _, p1 = m2df_loss(out, yq, head.cfg.replace(lam_vt=1.), ys, text)
    _, p2 = m2df_loss(twice, yq.repeat(2), head.cfg.replace(lam_vt=1.), ys.repeat(2), text)
    assert float(p2['video_text']) == pytest.approx(2 * float(p1['video_text']), rel=1e-5)
    assert float(p2['ce']) == pytest.approx(2 * float(p1['ce']), rel=1e-5)


# ---------------------------------------------------------------- 2. through training steps: λ and accumulation

def capture_steps(learner) -> list:
    "Record, at every optimiser step, the accumulated gradients and the learning rate the step uses."
    seen, real = [], learner.opt.step
    def step(*a, **k):
        seen.append(dict(lr=learner.opt.param_groups[0]['lr'],
                         grads={n: p.grad.detach().clone() for n, p in learner.model.named_parameters() if p.grad is not None}))
        return real(*a, **k)
    learner.opt.step = step
    return seen


def hand_step(model, episodes, lam: float, class_names) -> tuple:
    "Gradients of the mean over `episodes` of CE_sum + λ·MVMD, computed here from the model's outputs; and the losses."
    model = copy.deepcopy(model).train()
    model.zero_grad(set_to_none=True)
    losses = []
    for ep in episodes:
        text = model.class_text([class_names[i] for i in ep['class_ids'].tolist()])
        out = model(ep['support'], ep['query'], ep['support_labels'], text)
        ce, mvmd = summed_ce(out['logits'], ep['query_labels']), out['distill_loss'].double()
        loss = ce + lam * mvmd
        (loss / len(episodes)).backward()
        losses.append(dict(loss=loss.item(), ce=ce.item(), distill=mvmd.item()))
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, losses


def assert_same_grads(got: dict, want: dict, what: str):
    assert got.keys() == want.keys(), f'{what}: gradients of different parameters: {sorted(got.keys() ^ want.keys())[:5]}'
    scale = max(float(g.abs().max()) for g in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-3, atol=1e-5 * scale, msg=lambda m: f'{what}, {n}: {m}')


def head_difference(a: dict, b: dict) -> float:
    "Largest entry of the difference between two gradients of the head (every parameter but the backbone's)."
    names = [n for n in b if not n.startswith('backbone.')]
    assert names
    return max(float((a[n] - b[n]).abs().max()) for n in names)


def clipped(grads: dict, max_norm) -> dict:
    "The gradients scaled as `clip_grad_norm_` scales them (total 2-norm at most `max_norm`)."
    if not max_norm: return grads
    norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values())))
    return {n: g * min(1., max_norm / (norm + 1e-6)) for n, g in grads.items()}


@pytest.mark.parametrize('lam,grad_clip', [(0., None), (4., None), (4., 10.)])
def test_training_steps_follow_the_hand_accumulated_gradient(tmp_path, lam, grad_clip):
    """Two optimiser steps of 2 episodes each: the gradient each step applies is the mean over its episodes of the
    gradient of CE_sum + λ·MVMD (computed here from the model's outputs, not through `m2df_loss`), clipped when asked,
    and λ changes it; after the first step the weights are those of one Adam step with that gradient."""
    cfg = tiny(lam=lam, accumulation=2, query=2, grad_clip=grad_clip, **DETERMINISTIC)
    lr = Learner(cfg, tmp_path / 'run', progress=False)
    names = lr.split.class_names
    seen = capture_steps(lr)
    A = lr.per_rank
    assert A == 2
    episodes = list(itertools.islice(lr.batches(0), 2 * A))
    for s in range(2):
        eps = episodes[s * A:(s + 1) * A]
        unclipped, losses = hand_step(lr.model, eps, lam, names)
        want = clipped(unclipped, grad_clip)
        if grad_clip: assert torch.sqrt(sum(g.pow(2).sum() for g in unclipped.values())) > 2 * grad_clip   # it does clip
        before = {n: p.detach().clone() for n, p in lr.model.named_parameters()}
        tot = lr.train_step(eps)
        assert len(seen) == s + 1, 'one optimiser step per train_step'
        if s == 0:   # the weights: Adam's first step moves each weight by lr·g/(|g| + ε), i.e. lr·sign(g) where |g| ≫ ε
            scale = max(float(g.abs().max()) for g in want.values())
            moved = 0
            for n, p in lr.model.named_parameters():
                if n not in want: assert torch.equal(p, before[n]), f'{n} has no gradient but moved'; continue
                big = want[n].abs() > 1e-2 * scale          # well above the gradient tolerance: the sign is certain
                torch.testing.assert_close((before[n] - p.detach())[big], cfg.lr * want[n][big].sign(), rtol=0, atol=1e-6,
                                           msg=lambda m: f'{n} after one step of the hand-accumulated gradient: {m}')
                moved += int(big.sum())
            assert moved > 100
        assert seen[s]['lr'] == cfg.lr
        got = seen[s]['grads']
        assert_same_grads(got, want, f'step {s + 1}, lambda {lam}')
        if lam:   # the distillation term moves the head's gradient: the step follows it to well within its size
            without = clipped(hand_step(lr.model, eps, 0., names)[0], grad_clip)
            effect, error = head_difference(want, without), head_difference(got, want)
            print(f'lambda {lam}: effect of the distillation term {effect:.3g}, error {error:.3g}')
            assert effect > 0 and error < 0.01 * effect, (effect, error)
        assert tot['episodes'] == A and tot['queries'] == A * cfg.way * cfg.query
        for k in ('loss', 'ce') + (('distill',) if lam else ()):
            assert tot[k] == pytest.approx(sum(l[k] for l in losses), rel=1e-4, abs=1e-6), k
    assert lr.step == 2


def test_optimiser_steps_once_every_accumulation_episodes(tmp_path):
    "6 episodes with accumulation 3: two optimiser steps, of episodes 0-2 and 3-5, logged as episodes 3 and 6."
    cfg = tiny(episodes=6, accumulation=3, query=1, val_every=6, val_episodes=2, test_episodes=2)
    lr = Learner(cfg, tmp_path / 'run', progress=False)
    seen = capture_steps(lr)
    groups, real = [], lr.train_step
    def train_step(episodes):
        groups.append([int(ep['index']) for ep in episodes])
        return real(episodes)
    lr.train_step = train_step
    weights = [p.detach().clone() for p in lr.model.parameters()]
    res = lr.fit(test=False)
    assert len(seen) == 2, f'{len(seen)} optimiser steps for 6 episodes of accumulation 3'
    assert groups == [[0, 1, 2], [3, 4, 5]]
    assert (lr.step, lr.episode, res['steps'], res['episodes']) == (2, 6, 2, 6)
    assert [s['lr'] for s in seen] == [cfg.lr, cfg.lr]
    rows = (tmp_path / 'run' / 'metrics.csv').read_text().splitlines()
    head = rows[0].split(',')
    assert [r.split(',')[head.index('episode')] for r in rows[1:]] == ['3', '6']
    assert any(not torch.equal(a, b) for a, b in zip(weights, lr.model.parameters()))   # the steps did change the weights


# ---------------------------------------------------------------- 3. support and query: different videos, always

def check_episode(spec, way: int, shot: int, query: int, where: str):
    "One episode: `way` distinct classes, K support and Q query videos per class, all distinct, none in both."
    msg = f'{where}, episode {spec.index}'
    assert len(spec.class_ids) == way == len(set(spec.class_ids)), f'{msg}: classes {spec.class_ids}'
    assert len(spec.support) == way * shot and len(spec.query) == way * query, msg
    s, q = [r.path for r in spec.support], [r.path for r in spec.query]
    assert len(set(s)) == len(s), f'{msg}: a support video is drawn twice'
    assert len(set(q)) == len(q), f'{msg}: a query video is drawn twice'
    both = set(s) & set(q)
    assert not both, f'{msg}: video(s) {sorted(both)[:3]} are both support and query'
    for recs, labels in ((spec.support, spec.support_labels), (spec.query, spec.query_labels)):
        assert [r.label for r in recs] == [spec.class_ids[y] for y in labels], f'{msg}: a video sits under another class'


N_EPISODES = 300   # per split and shot; a query drawn independently of the support collides within a few dozen


@pytest.fixture(scope='module')
def ssv2_labels(tmp_path_factory):
    "A folder holding an SSv2 labels file (numeric id -> a made-up name: names play no part here)."
    d = tmp_path_factory.mktemp('ssv2')
    (d / SSV2_LABELS).write_text(json.dumps({f'template {i}': str(i) for i in range(174)}))
    return d


@pytest.mark.parametrize('bench', REAL)
def test_real_benchmark_episodes_keep_support_and_query_apart(bench, ssv2_labels):
    "Training episodes (Q = 5, two ranks) and the fixed evaluation episodes, 1 and 5 shots, of every real split list."
    folder = real_splits_dir()
    lists = dict(splits_dir=str(folder), data_root=str(ssv2_labels))
    for split_name in SPLITS:
        split = load_split(bench, split_name, splits_dir=folder, labels_json=ssv2_labels / SSV2_LABELS)
        for shot in (1, 5):
            cfg = make_config(bench if bench in BENCHMARK_PRESETS else 'ucf101', shot=shot, **lists)
            if split_name == 'train':    # what the learner draws: Q = cfg.query, ranks draw their own episodes
                for rank in (0, 1):
                    sampler = EpisodeSampler(split, cfg.way, shot, cfg.query, seed=cfg.seed, rank=rank, min_videos_ok=True)
                    for i in range(N_EPISODES):
                        check_episode(sampler.episode(i), cfg.way, shot, cfg.query, f'{bench}/train rank {rank}')
            elif bench in BENCHMARK_PRESETS:   # the fixed evaluation episodes every model is scored on
                sp, specs = episodes_of(cfg, split_name, N_EPISODES)
                assert sp.videos == split.videos
                for spec in specs: check_episode(spec, cfg.way, shot, cfg.eval_query, f'{bench}/{split_name}')
            else:                              # a list without a dataset preset: the same sampler, the evaluation seed
                sampler = EpisodeSampler(split, cfg.way, shot, cfg.eval_query, seed=cfg.eval_seed, min_videos_ok=True)
                for i in range(N_EPISODES):
                    check_episode(sampler.episode(i), cfg.way, shot, cfg.eval_query, f'{bench}/{split_name}')


def test_synthetic_episodes_keep_support_and_query_apart():
    "The synthetic benchmark: the specs of training and evaluation episodes, and the videos the decoded episodes carry."
    cfg = tiny()
    for shot in (1, 5):
        c = cfg.replace(shot=shot)
        train = benchmark_split(c, 'train')
        sampler = EpisodeSampler(train, c.way, shot, c.query, seed=c.seed)
        for i in range(N_EPISODES): check_episode(sampler.episode(i), c.way, shot, c.query, 'synthetic/train')
        for split_name in ('val', 'test'):
            sp, specs = episodes_of(c, split_name, N_EPISODES)
            for spec in specs: check_episode(spec, c.way, shot, c.eval_query, f'synthetic/{split_name}')
    # the decoded training episodes of the learner's loader name the videos they hold
    for ep in episode_loader(cfg, 'train', 2, train=True, seed=cfg.seed):
        s, q = ep['support_ids'], ep['query_ids']
        assert len(s) == cfg.way * cfg.shot and len(q) == cfg.way * cfg.query
        assert len(set(s)) == len(s) and len(set(q)) == len(q) and not set(s) & set(q), ep['index']


# ---------------------------------------------------------------- 4. PPS sets the query prompts

def fusion_prompts(model, *episode) -> tuple:
    "The prompt tokens each view's fusion encoder receives (support then queries), and the model's output."
    got = {}
    hooks = [model.fusion[v].register_forward_pre_hook(lambda m, args, v=v: got.__setitem__(v, args[0].detach().clone()))
             for v in model.fusion]
    try: out = model(*episode)
    finally:
        for h in hooks: h.remove()
    assert got.keys() == set(model.fusion) == {'local', 'global'}
    return got, out


def pps_by_hand(fq, text, topk, tau) -> torch.Tensor:
    "π = softmax_c(τ · mean of the top-k cosines between each query's frames and E_c)."
    sim = torch.einsum('qtd,nd->qnt', F.normalize(fq.double(), dim=-1), F.normalize(text.double(), dim=-1))
    return torch.softmax(tau * sim.topk(min(topk, sim.shape[-1]), -1).values.mean(-1), -1)


def torn_queries(text, yq, seed=0) -> torch.Tensor:
    "Query frames halfway between the texts of their class and of the next one: π splits between the two (τ = 200)."
    g = torch.Generator().manual_seed(seed)
    way, frames = len(text), 4
    e = F.normalize(text, dim=-1)
    mid = e[yq] + e[(yq + 1) % way]      # equally close to both texts
    return mid.unsqueeze(1) + 0.002 * torch.randn(len(yq), frames, text.shape[-1], generator=g)


def with_cfg(head, **change) -> M2DF:
    "A model with the weights of `head` under a changed config."
    m = M2DF(head.cfg.replace(**change), backbone=head.backbone)
    m.load_state_dict(head.state_dict())
    return m


def one_class_text(prompts, text) -> torch.Tensor:
    "For each prompt, its largest entry-wise distance to the nearest class text (0: the prompt is a class text)."
    return (prompts.unsqueeze(1) - text.unsqueeze(0)).abs().amax(-1).amin(-1)


def test_pps_gives_the_queries_their_probability_prompts(head):
    fs, _, ys, yq, text = random_episode(head, query=2, seed=1)
    fq = torn_queries(text, yq)
    n = len(fs)
    pi = pps_by_hand(fq, text, head.cfg.pps_topk, head.cfg.pps_tau)
    assert (pi.amax(-1) < 0.9).sum() >= 3, 'the test needs queries whose π is not one-hot'
    # evaluation (expectation, the default) while training samples: the query prompt is Σ_c π_c E_c, not one class text
    m = with_cfg(head, pps_train_mode='sample', pps_eval_mode='expectation')
    assert m.cfg.use_pps
    prompts, out = fusion_prompts(m.eval(), fs, fq, ys, text)
    for v, p in prompts.items():
        torch.testing.assert_close(p[:n], text[ys], msg=f'{v}: support prompt is its class text')
        # (near a tie τ = 200 amplifies the float32 rounding of the cosines: 1e-3 here, against 0.1 below)
        torch.testing.assert_close(p[n:].double(), pi @ text.double(), rtol=1e-3, atol=1e-3, msg=f'{v}: query prompt Σ π E')
        assert one_class_text(p[n:], text).max() > 0.1
    # argmax and sample modes in evaluation (training on expectation) hand each query the text of one class
    for mode in ('argmax', 'sample'):
        prompts, _ = fusion_prompts(with_cfg(head, pps_train_mode='expectation', pps_eval_mode=mode).eval(), fs, fq, ys, text)
        for v, p in prompts.items():
            assert one_class_text(p[n:], text).max() < 1e-5, f'{mode}, {v}: a query prompt is not one class text'
            if mode == 'argmax':
                picked = (p[n:].unsqueeze(1) - text.unsqueeze(0)).abs().amax(-1).argmin(-1)
                assert picked.tolist() == pi.argmax(-1).tolist()
    # PPS off: every prompt is the zero token, and the model's logits change
    prompts_off, out_off = fusion_prompts(with_cfg(head, use_pps=False).eval(), fs, fq, ys, text)
    for v, p in prompts_off.items(): assert not p.any(), f'{v}: PPS off should give zero prompts'
    assert (out['logits'] - out_off['logits']).abs().max() > 1e-4


def test_pps_in_training_follows_the_training_mode(head):
    "Training samples one class text per query (evaluation on expectation); training on expectation gives Σ π E."
    fs, _, ys, yq, text = random_episode(head, query=2, seed=2)
    fq = torn_queries(text, yq, seed=2)
    n = len(fs)
    torch.manual_seed(0)
    prompts, _ = fusion_prompts(with_cfg(head, pps_train_mode='sample', pps_eval_mode='expectation').train(), fs, fq, ys, text)
    for v, p in prompts.items():
        torch.testing.assert_close(p[:n], text[ys])
        assert one_class_text(p[n:], text).max() < 1e-5, v
    pi = pps_by_hand(fq, text, head.cfg.pps_topk, head.cfg.pps_tau)
    prompts, _ = fusion_prompts(with_cfg(head, pps_train_mode='expectation', pps_eval_mode='sample').train(), fs, fq, ys, text)
    for v, p in prompts.items():
        torch.testing.assert_close(p[n:].double(), pi @ text.double(), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- 5. the model follows its switches

def recomputed(out: dict, cfg: M2DFConfig, way: int) -> dict:
    "Distances, logits, text logits and MVMD recomputed under `cfg` from the fused tokens the model returned."
    d = {}
    for v in cfg.views:
        zq, u = out['query_tokens'][v], out['prototypes'][v]
        tok = slice(None) if v == 'raw' else slice(1, None)        # token 0 of a fused view is the prompt position
        if cfg.matching == 'mean_cos': d[v] = mean_cosine_distance(zq[:, tok], u[:, tok])
        else: d[v] = otam_distance(zq[:, tok], u[:, tok], lam=cfg.otam_lambda, bidirectional=cfg.otam_bidirectional,
                                   variant=cfg.otam_variant)
    r = dict(dist=d, logits=-cfg.logit_scale * sum(d.values()))
    t = 0 if cfg.text_token == 'prompt' else 1
    r['text'] = {v: F.normalize(out['query_tokens'][v][:, t].float(), dim=-1) @ F.normalize(out['prototypes'][v][:, t].float(), dim=-1).T
                 for v in cfg.views if v != 'raw'}
    if cfg.distill:
        dl, dg = out['dist']['local'], out['dist']['global']     # the model's own distances, so gradients can be compared
        loss, _ = mutual_distillation_loss(dl, dg, r['text']['local'], r['text']['global'], condition=cfg.distill_condition,
                                           direction=cfg.distill_direction, detach_teacher=cfg.detach_teacher)
        r['mvmd'] = loss
        r['mvmd_grad'] = torch.autograd.grad(loss, [dl, dg], retain_graph=True, allow_unused=True)
    return r


def differs(a, b) -> bool:
    "Whether two (nested) results differ anywhere beyond rounding."
    if isinstance(a, dict): return any(differs(a[k], b[k]) for k in a if k in b)
    if isinstance(a, (tuple, list)): return any(differs(x, y) for x, y in zip(a, b))
    if a is None or b is None: return (a is None) != (b is None)
    return not torch.allclose(a.detach().double(), b.detach().double(), rtol=1e-4, atol=1e-6)


SWITCHES = [dict(logit_scale=1.), dict(otam_lambda=0.1), dict(otam_bidirectional=False), dict(otam_variant='reference'),
            dict(matching='mean_cos'), dict(text_token='first_frame'), dict(distill_condition='t'),
            dict(distill_condition='v'), dict(distill_condition='none'), dict(distill_direction='l2g'),
            dict(distill_direction='g2l'), dict(detach_teacher=False)]


@pytest.mark.parametrize('change', SWITCHES, ids=lambda c: '-'.join(f'{k}={v}' for k, v in c.items()))
def test_model_follows_each_switch(head, change):
    "With one field changed from the paper's setting, the model's outputs are those the changed field asks for, and differ."
    fs, fq, ys, yq, text = random_episode(head, query=3, seed=3)
    cfg = head.cfg.replace(**change)
    m = M2DF(cfg, backbone=head.backbone)
    m.load_state_dict(head.state_dict())
    out = m.eval()(fs, fq, ys, text)
    want = recomputed(out, cfg, len(text))
    for v in cfg.views:
        torch.testing.assert_close(out['dist'][v], want['dist'][v], rtol=1e-5, atol=1e-6, msg=lambda s: f'{v} distances: {s}')
        torch.testing.assert_close(out['text'][v], want['text'][v], rtol=1e-5, atol=1e-6, msg=lambda s: f'{v} text logits: {s}')
    torch.testing.assert_close(out['logits'], want['logits'], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out['distill_loss'], want['mvmd'], rtol=1e-5, atol=1e-7)
    got_grad = torch.autograd.grad(out['distill_loss'], [out['dist']['local'], out['dist']['global']], retain_graph=True, allow_unused=True)
    assert not differs(got_grad, want['mvmd_grad']), 'MVMD gradient into the distances'
    # the switch matters on this episode: the paper's setting would have given something else
    assert differs(want, recomputed(out, head.cfg, len(text))), f'{change} changes nothing here: the test has no power'


def test_views_and_ablation_presets_build_their_views(head):
    fs, fq, ys, yq, text = random_episode(head, query=2, seed=4)
    m = M2DF(tiny(**DETERMINISTIC))
    assert isinstance(m.context['local'], LocalTemporalContext) and isinstance(m.context['global'], GlobalTemporalContext)
    for preset, views in (('local_only', ('local',)), ('global_only', ('global',)), ('clipfsar', ('raw',))):
        cfg = tiny(preset=preset)
        assert cfg.views == views and not cfg.distill
        m = M2DF(cfg, backbone=head.backbone).eval()
        out = m(fs, fq, ys, text)
        assert set(out['dist']) == set(views) and out['distill_loss'] is None
        for v in views:
            if v == 'local': assert isinstance(m.context[v], LocalTemporalContext)
            if v == 'global': assert isinstance(m.context[v], GlobalTemporalContext)
        if views == ('raw',):   # the CLIP-FSAR baseline matches the raw frames, all T of them, against class means
            want = otam_distance(fq, class_prototypes(fs, ys, len(text)))
            torch.testing.assert_close(out['dist']['raw'], want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out['logits'], -cfg.logit_scale * want, rtol=1e-5, atol=1e-6)


def test_presets_set_what_their_names_say():
    paper = make_config('ucf101')
    assert (paper.use_pps, paper.views, paper.distill, paper.pps_eval_mode, paper.text_token, paper.detach_teacher,
            paper.normalize, paper.otam_variant, paper.logit_scale, paper.lam) == \
        (True, ('local', 'global'), True, 'expectation', 'prompt', True, True, 'paper', 1., 1.)
    ref = make_config('ucf101', 'reference')   # the authors' code: sampled test prompts, first frame token, no detach, raw pixels
    assert (ref.pps_eval_mode, ref.text_token, ref.detach_teacher, ref.normalize, ref.otam_variant) == \
        ('sample', 'first_frame', False, False, 'reference')
    assert not make_config('ucf101', 'no_pps').use_pps and make_config('ucf101', 'no_pps').distill
    assert not make_config('ucf101', 'no_distill').distill and make_config('ucf101', 'no_distill').use_pps
    assert make_config('ucf101', 'local_only').views == ('local',) and make_config('ucf101', 'global_only').views == ('global',)
    fsar = make_config('ucf101', 'clipfsar')
    assert (fsar.use_pps, fsar.views, fsar.distill) == (False, ('raw',), False)
    # raw −OTAM distances do not train the tiny random model: the synthetic benchmark scales its logits, the paper does not
    assert make_config('synthetic').logit_scale > 1
    # never flip SSv2 ("left to right" would become "right to left"); the other benchmarks may flip
    for bench in BENCHMARK_PRESETS:
        t = clip_transform(make_config(bench), train=True)
        assert t.flip == (bench in ('ucf101', 'hmdb51', 'kinetics100')), bench
        assert t.normalize and not clip_transform(make_config(bench, 'reference'), train=True).normalize
    t = clip_transform(tiny(resize=72, crop=48), train=False)
    assert (t.resize, t.crop) == (72, 48)


def test_frozen_backbone_and_fusion_size_reach_the_model(head):
    m = M2DF(tiny())
    visual = [p.requires_grad for n, p in m.backbone.named_parameters() if '.visual.' in f'.{n}']
    assert visual and all(visual)
    frozen = M2DF(tiny(freeze_backbone=True))
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    deep = M2DF(tiny(fusion_depth=2))
    assert count(deep.fusion['local']) == 2 * count(m.fusion['local'])
    D, ffn = m.dim, m.cfg.fusion_ffn
    wide = M2DF(tiny(fusion_ffn=ffn + 32))    # D→ffn→D: 32 more hidden units add 2·32·D weights and 32 biases
    assert count(wide.fusion['local']) - count(m.fusion['local']) == 2 * 32 * D + 32
    # heads: the same weights split into another number of heads give other outputs
    assert head.cfg.fusion_heads == 4
    fs, fq, ys, yq, text = random_episode(head, query=1, seed=5)
    other = with_cfg(head, fusion_heads=8).eval()(fs, fq, ys, text)
    assert (head.eval()(fs, fq, ys, text)['logits'] - other['logits']).abs().max() > 1e-4
    for v in ('local', 'global'): assert head.fusion[v].heads == 4 and M2DF(tiny(fusion_heads=8)).fusion[v].heads == 8


# ---------------------------------------------------------------- 6. episodes follow the seed, the rank and augmentation

def test_training_episodes_follow_seed_and_rank_and_evaluation_episodes_do_not():
    cfg = tiny()
    split = benchmark_split(cfg, 'train')
    eps = lambda seed, rank: [EpisodeSampler(split, cfg.way, cfg.shot, cfg.query, seed=seed, rank=rank).episode(i) for i in range(5)]
    assert eps(0, 0) == eps(0, 0)
    assert eps(0, 0) != eps(1, 0), 'the training seed should change the training episodes'
    assert eps(0, 0) != eps(0, 1), 'two ranks should draw different episodes'
    # every model (whatever its training seed) is scored on the same fixed episodes
    assert episodes_of(cfg.replace(seed=7), 'test', 5)[1] == episodes_of(cfg, 'test', 5)[1]


def test_train_augment_off_gives_the_evaluation_clips():
    cfg = tiny(query=1, train_augment=False)
    plain = next(iter(episode_loader(cfg, 'train', 1, train=True, seed=cfg.seed)))
    ref = next(iter(episode_loader(cfg, 'train', 1, train=True, seed=cfg.seed, augment=False)))
    aug = next(iter(episode_loader(cfg.replace(train_augment=True), 'train', 1, train=True, seed=cfg.seed)))
    assert plain['support_ids'] == ref['support_ids'] == aug['support_ids']
    assert torch.equal(plain['support'], ref['support']) and torch.equal(plain['query'], ref['query'])
    assert not torch.equal(aug['support'], ref['support'])


# ---------------------------------------------------------------- 7. model selection

def scripted_evaluate(scores: dict, seen: list):
    "A stand-in for `evaluate` that returns the next scripted accuracy of each split and records the weights it scored."
    def evaluate(model, cfg, split='test', **kw):
        seen.append((split, weights_digest(model)))
        return dict(accuracy=scores[split].pop(0), ci95=0., episodes=1)
    return evaluate


def test_best_validation_checkpoint_is_kept_and_tested(tmp_path, monkeypatch):
    "Validation accuracies 40, 70, 50: best.pt holds the weights of step 2, and the test split is scored with them."
    seen = []
    monkeypatch.setattr(L, 'evaluate', scripted_evaluate(dict(val=[40., 70., 50.], test=[33.]), seen))
    cfg = tiny(episodes=3, accumulation=1, query=1, val_every=1, save_every=1)
    lr = Learner(cfg, tmp_path / 'run', progress=False)
    res = lr.fit(test=True)
    vals = [json.loads(l) for l in (tmp_path / 'run' / 'val.jsonl').read_text().splitlines()]
    assert [v['best'] for v in vals] == [True, True, False] and lr.best == 70.
    best = load_checkpoint(tmp_path / 'run' / 'checkpoints' / 'best.pt', cfg)
    assert best['step'] == 2
    m = M2DF(cfg); m.load_state_dict(best['model'])
    val_digests = [d for s, d in seen if s == 'val']
    assert weights_digest(m) == val_digests[1] != val_digests[2]
    assert [s for s, _ in seen] == ['val', 'val', 'val', 'test']
    assert seen[-1][1] == val_digests[1], 'the test split must be scored with the best validation weights'
    assert res['test']['accuracy'] == 33.


# ---------------------------------------------------------------- 8. evaluation scores the argmax of the logits

class Oracle(M2DF):
    "The tiny model with rigged logits: +1 (or −1 with sign −1) for each query's true class, known from the class-major order."
    sign = 1.
    def forward(self, support, query, support_labels, class_text, **kw):
        way, n = class_text.shape[-2], query.shape[-3]            # one episode, or E of them stacked (evaluation)
        y = torch.arange(way).repeat_interleave(n // way)
        return dict(logits=self.sign * F.one_hot(y, way).float().expand(*query.shape[:-3], n, way))


def test_evaluation_scores_the_argmax_class():
    cfg = tiny(eval_query=2)
    torch.manual_seed(0)
    right = Oracle(cfg)
    r = L.evaluate(right, cfg, 'val', n_episodes=2)
    assert r['accuracy'] == 100. and r['episode_accuracy'] == [1., 1.] and set(r['per_class'].values()) == {100.}
    wrong = Oracle(cfg); wrong.sign = -1.
    r = L.evaluate(wrong, cfg, 'val', n_episodes=2)
    assert r['accuracy'] == 0. and set(r['per_class'].values()) == {0.}

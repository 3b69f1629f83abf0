"Tests of m2df.evaluate: the feature cache changes nothing but the time, fixed episodes, the 95% CI, per-class accuracy, cache keys."
import copy, itertools, math
from collections import Counter

import numpy as np
import pytest
import torch

import m2df.evaluate as E
from m2df.config import make_config
from m2df.episodes import benchmark_split, episode_loader
from m2df.evaluate import FeatureCache, episodes_of, evaluate, feature_key, mean_ci95, weights_digest
from m2df.learner import Learner
from m2df.model import M2DF

from conftest import TINY, tiny




@pytest.fixture(scope='module')
def cfg(): return tiny()


@pytest.fixture(scope='module')
def model(cfg):
    torch.manual_seed(0)
    return M2DF(cfg).eval()


@pytest.fixture(scope='module')
def shared(model, cfg):
    "One in-memory cache of the validation features, shared by the tests (decoding is what costs here)."
    return FeatureCache()


@pytest.fixture(scope='module')
def val8(model, cfg, shared):
    "The scores of 8 fixed validation episodes."
    return evaluate(model, cfg, 'val', n_episodes=8, cache=shared)


@pytest.fixture
def encode_calls(monkeypatch):
    "Count the videos handed to the backbone through `encode_videos`."
    calls, real = [], E.encode_videos
    def counting(model, records, cfg, **kw):
        calls.append(len(records)); return real(model, records, cfg, **kw)
    monkeypatch.setattr(E, 'encode_videos', counting)
    return calls


def unique_videos(specs) -> set: return {r.path for s in specs for r in s.support + s.query}


def test_cache_gives_the_same_scores_as_decoding_every_episode(model, cfg, encode_calls):
    n = 3
    cache = FeatureCache()
    cached = evaluate(model, cfg, 'val', n_episodes=n, cache=cache)
    assert sum(encode_calls) == len(unique_videos(episodes_of(cfg, 'val', n)[1]))   # each distinct video encoded once
    decoded = evaluate(model, cfg, 'val', n_episodes=n, cache=False)
    assert len(cached['episode_accuracy']) == n
    assert cached['episode_accuracy'] == decoded['episode_accuracy']
    assert cached['per_class'] == decoded['per_class']
    # and the cached features are those of the decoded episode's clips
    ep = next(iter(episode_loader(cfg, 'val', 1, train=False)))
    store = cache.get(model, cfg, 'val', episodes_of(cfg, 'val', 1)[1][0].support)
    with torch.no_grad(): f = model.encode(ep['support'])
    torch.testing.assert_close(torch.stack([store[p] for p in ep['support_ids']]), f)


def test_fixed_episodes_are_identical_across_calls(model, cfg, shared, val8):
    a, b = episodes_of(cfg, 'val', 3)[1], episodes_of(cfg, 'val', 3)[1]
    assert a == b
    assert episodes_of(cfg.replace(eval_seed=cfg.eval_seed + 1), 'val', 3)[1] != a
    assert len({tuple(s.class_ids) for s in a}) > 1                      # the episodes differ from each other
    r1, r2 = evaluate(model, cfg, 'val', n_episodes=3, cache=shared), evaluate(model, cfg, 'val', n_episodes=3, cache=shared)
    assert r1['episode_accuracy'] == r2['episode_accuracy'] == val8['episode_accuracy'][:3]   # episode i does not depend on n
    assert (r1['episodes'], r1['seed'], r1['way'], r1['shot'], r1['query']) == (3, cfg.eval_seed, 5, 1, 1)


def test_mean_and_95_ci(val8):
    m, h = mean_ci95([0., 1.] * 50)
    assert (m, h) == (0.5, pytest.approx(1.96 * 0.5 / 10))
    with pytest.raises(ValueError, match='no values'): mean_ci95([])
    r = val8
    acc = np.array(r['episode_accuracy'])
    assert len(acc) == 8 and ((acc >= 0) & (acc <= 1)).all()
    assert r['accuracy'] == pytest.approx(100 * acc.mean())
    assert r['ci95'] == pytest.approx(100 * 1.96 * acc.std() / math.sqrt(len(acc)))
    assert 0 <= r['accuracy'] <= 100


def test_per_class_accuracy_is_keyed_by_class_name(cfg, val8):
    n, r = 8, val8
    split, specs = episodes_of(cfg, 'val', n)
    seen = Counter(split.class_names[c] for s in specs for c in s.class_ids)     # 1 query per class and episode
    assert set(r['per_class']) == set(seen)
    assert set(r['per_class']) <= set(split.class_names)
    assert any(' ' in k for k in r['per_class'])                     # prompt names ('spiral in'), not folder keys
    correct = sum(r['per_class'][k] / 100 * seen[k] for k in seen)
    assert correct == pytest.approx(sum(r['episode_accuracy']) * cfg.way)


def test_feature_key_follows_what_the_features_depend_on(model, cfg):
    k = feature_key(model, cfg, 'val')
    assert feature_key(model, cfg, 'val') == k
    assert feature_key(model, cfg.replace(lam=0.3, lr=1e-3), 'val') == k              # not a feature's input
    assert feature_key(copy.deepcopy(model), cfg, 'val') == k                          # same weights, same key
    for change in (dict(frames=8), dict(crop=48), dict(normalize=False), dict(resize=72)):
        assert feature_key(model, cfg.replace(**change), 'val') != k, change
    assert feature_key(model, cfg, 'test') != k
    other = copy.deepcopy(model)
    with torch.no_grad(): next(other.backbone.parameters()).view(-1)[0] += 1e-4
    assert weights_digest(other.backbone) != weights_digest(model.backbone)
    assert feature_key(other, cfg, 'val') != k


def test_frozen_backbone_features_persist_under_the_run_dir(tmp_path, encode_calls):
    cfg = tiny(freeze_backbone=True, val_episodes=2, accumulation=1, query=1)
    run = tmp_path / 'run'
    n_unique = len(unique_videos(episodes_of(cfg, 'val', 2)[1]))
    first = Learner(cfg, run, progress=False)
    r1 = first.validate()
    files = list((run / 'features').glob('*.pt'))
    assert len(files) == 1 and sum(encode_calls) == n_unique
    saved = torch.load(files[0], weights_only=True)
    assert len(saved['features']) == len(saved['identity']) == n_unique
    # a training step leaves a frozen backbone, hence the key, unchanged: the next validation encodes nothing
    first.train_step(list(itertools.islice(first.batches(0), first.per_rank)))
    encode_calls.clear()
    assert first.validate()['val_accuracy'] >= 0 and encode_calls == []
    # a new learner on the same run folder (a new process) reads them from disk
    second = Learner(cfg, tmp_path / 'run', progress=False)
    r2 = second.validate()
    assert encode_calls == [] and r2['val_accuracy'] == r1['val_accuracy']


def test_fine_tuned_backbone_features_stay_in_memory(tmp_path, model, cfg, encode_calls):
    cache = FeatureCache(tmp_path / 'features')
    evaluate(model, cfg, 'val', n_episodes=1, cache=cache)
    assert not (tmp_path / 'features').exists()                      # a backbone that trains: nothing on disk
    n = sum(encode_calls)
    evaluate(model, cfg, 'val', n_episodes=1, cache=cache)
    assert sum(encode_calls) == n                                    # but reused while the weights are the same


# --- non-finite numbers are errors, never scores

@pytest.mark.parametrize('pps_eval_mode', ['expectation', 'sample'])
def test_nan_weights_are_an_error_naming_split_and_episode(cfg, pps_eval_mode):
    "A model whose weights hold NaN scored chance (1/way, ± 0) and exited 0; now the split and the episode are named."
    c = cfg.replace(pps_eval_mode=pps_eval_mode)
    torch.manual_seed(0)
    bad = M2DF(c).eval()
    with torch.no_grad(): next(bad.fusion['global'].parameters()).fill_(float('nan'))
    with pytest.raises(FloatingPointError, match=r'non-finite logits at test episode 0 .*fusion\.global'):
        evaluate(bad, c, 'test', n_episodes=3)
    with torch.no_grad(): bad.backbone.clip.visual.conv1.weight.fill_(float('nan'))   # NaN before the prompt selector
    with pytest.raises(FloatingPointError, match=r'non-finite query frame features at val episode 0, before the prompt selector'):
        evaluate(bad, c, 'val', n_episodes=3)


def test_sampled_prompts_do_not_depend_on_the_random_state(cfg):
    "With prompts sampled in evaluation, the score is a function of the model and the episodes, not of what ran before."
    c = cfg.replace(pps_eval_mode='sample', logit_scale=50., pps_tau=2.)   # a flat π: the draws vary
    torch.manual_seed(0)
    model, shared = M2DF(c).eval(), FeatureCache()
    draws = []
    model.pps.register_forward_hook(lambda mod, args, out: draws.append(out[0].detach().clone()))   # the query prompts
    torch.manual_seed(1); a = evaluate(model, c, 'val', n_episodes=8, cache=shared)
    first, draws[:] = torch.cat(draws), []                 # E×Q×D per call: 8 episodes' query prompts
    torch.manual_seed(2); torch.rand(5); b = evaluate(model, c, 'val', n_episodes=8, cache=shared, chunk=3)
    assert a['episode_accuracy'] == b['episode_accuracy']
    assert len(first) == 8 and torch.equal(first, torch.cat(draws)), 'the sampled prompts differ'
    assert len({tuple(p.flatten().tolist()) for p in first.flatten(0, 1)}) > 1, 'every draw is the same class: the test would mean little'
    state = torch.get_rng_state()
    evaluate(model, c, 'val', n_episodes=2, cache=shared)
    assert torch.equal(state, torch.get_rng_state()), 'evaluation must leave the training random state alone'


# --- many episodes at once: the batched head scores every episode as it scores it alone

BATCH_PRESETS = {'paper': ('paper', {}), 'reference': ('reference', {}), 'clipfsar': ('clipfsar', {}),
                 'mean_cos': ('paper', dict(matching='mean_cos')), 'no_pps': ('no_pps', {})}


def preset_cfg(name, **kw):
    "The tiny synthetic config under one of the presets above (`mean_cos`: `paper` with mean-cosine matching)."
    preset, over = BATCH_PRESETS[name]
    return make_config('synthetic', preset, **{**TINY, **over, **kw})


def random_feature_cache(model, cfg, split, seed=0, noise=4.):
    "A feature cache that holds, for every video of `split`, its class's random T×D sequence plus Gaussian noise."
    sp = benchmark_split(cfg, split)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sp.classes), cfg.frames, model.dim, generator=g)
    cache = FeatureCache()
    cache.mem[feature_key(model, cfg, split)] = {r.path: centres[r.label] + noise * torch.randn(cfg.frames, model.dim, generator=g)
                                                 for r in sp.videos}
    return cache


def stacked_episodes(model, cfg, split, cache, n):
    "The head's inputs of the first `n` fixed episodes of `split`, stacked: E×NK×T×D, E×Q×T×D, E×NK labels, E×N×D texts."
    sp, specs = episodes_of(cfg, split, n)
    feats = cache.get(model, cfg, split, [r for s in specs for r in s.support + s.query])
    text = model.class_text(sp.class_names)
    return (torch.stack([torch.stack([feats[r.path] for r in s.support]) for s in specs]),
            torch.stack([torch.stack([feats[r.path] for r in s.query]) for s in specs]),
            torch.stack([torch.as_tensor(s.support_labels) for s in specs]),
            torch.stack([text[torch.as_tensor(s.class_ids)] for s in specs]), specs)


@pytest.mark.parametrize('name', BATCH_PRESETS)
def test_batched_head_gives_each_episode_its_own_outputs(name):
    "forward_features on E stacked episodes = forward_features on each alone: logits, distances, π, text logits, prototypes, MVMD."
    cfg = preset_cfg(name, pps_tau=2.)                 # a flat π: sampled prompts (reference) really vary
    torch.manual_seed(0)
    model = M2DF(cfg).eval()
    fs, fq, ys, text, specs = stacked_episodes(model, cfg, 'val', random_feature_cache(model, cfg, 'val'), 6)
    gens = lambda: [E.episode_generator(cfg.eval_seed, 'val', s.index) for s in specs]
    with torch.no_grad():
        many = model.forward_features(fs, fq, ys, text, generator=gens())
        alone = [model.forward_features(fs[i], fq[i], ys[i], text[i], generator=g) for i, g in enumerate(gens())]
    close = lambda a, b, what: torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f'{name}, {what}: {m}')
    close(many['logits'], torch.stack([o['logits'] for o in alone]), 'logits')
    for v in cfg.views:
        close(many['dist'][v], torch.stack([o['dist'][v] for o in alone]), f'{v} distances')
        close(many['prototypes'][v], torch.stack([o['prototypes'][v] for o in alone]), f'{v} prototypes')
        if v != 'raw': close(many['text'][v], torch.stack([o['text'][v] for o in alone]), f'{v} text logits')
    if cfg.use_pps: close(many['pps_probs'], torch.stack([o['pps_probs'] for o in alone]), 'PPS probabilities')
    if cfg.distill: close(many['distill_loss'], torch.stack([o['distill_loss'] for o in alone]), 'distillation loss')
    # what depends on a video alone (contexts; tokens of a support video, whose prompt is its own class's text), computed
    # per video as evaluation does for the distinct videos, then gathered: the same outputs
    own = text.gather(1, ys.unsqueeze(-1).expand(-1, -1, text.shape[-1]))
    with torch.no_grad():
        sup, qry = model.video_outputs(fs.flatten(0, 1), own.flatten(0, 1)), model.video_outputs(fq.flatten(0, 1), fq[:, :, 0].flatten(0, 1))
        pre = dict(query_context={v: c.unflatten(0, fq.shape[:2]) for v, c in qry['context'].items()},
                   support_tokens={v: z.unflatten(0, fs.shape[:2]) for v, z in sup['support_tokens'].items()})
        via = model.forward_features(fs, fq, ys, text, generator=gens(), precomputed=pre)
    close(via['logits'], many['logits'], 'logits from per-video outputs')
    preds = many['logits'].argmax(-1)
    assert len({tuple(p.tolist()) for p in preds}) > 1, 'every episode predicts the same: the comparison would mean little'


@pytest.mark.parametrize('name', BATCH_PRESETS)
def test_batched_evaluation_scores_every_episode_as_one_at_a_time(name):
    "evaluate in chunks of episodes (5, a last chunk of 2) = one episode at a time, episode by episode, on random features."
    cfg = preset_cfg(name, pps_tau=2.)
    torch.manual_seed(0)
    model = M2DF(cfg).eval()
    cache = random_feature_cache(model, cfg, 'val')
    one = evaluate(model, cfg, 'val', n_episodes=12, cache=cache, chunk=1)
    many = evaluate(model, cfg, 'val', n_episodes=12, cache=cache, chunk=5)
    assert many['episode_accuracy'] == one['episode_accuracy'] and many['per_class'] == one['per_class']
    fs, fq, ys, text, specs = stacked_episodes(model, cfg, 'val', cache, 12)       # the plain head, episode by episode
    with torch.no_grad():
        plain = [int((model.forward_features(fs[i], fq[i], ys[i], text[i], generator=E.episode_generator(cfg.eval_seed, 'val', s.index))
                      ['logits'].argmax(-1) == torch.as_tensor(s.query_labels)).sum()) / len(s.query) for i, s in enumerate(specs)]
    assert many['episode_accuracy'] == plain
    assert len(set(one['episode_accuracy'])) > 1, 'every episode scores the same: the comparison would mean little'


@pytest.mark.parametrize('name', BATCH_PRESETS)
def test_batched_evaluation_on_the_synthetic_benchmark(name):
    "On the decoded synthetic videos: the default chunk, one at a time, and decoding every episode agree episode by episode."
    cfg = preset_cfg(name)
    torch.manual_seed(0)
    model = M2DF(cfg).eval()
    cache = FeatureCache()
    batched = evaluate(model, cfg, 'val', n_episodes=6, cache=cache)
    assert cfg.eval_chunk >= 6                                  # one call of the head for the six
    assert evaluate(model, cfg, 'val', n_episodes=6, cache=cache, chunk=1)['episode_accuracy'] == batched['episode_accuracy']
    assert evaluate(model, cfg, 'val', n_episodes=6, cache=False)['episode_accuracy'] == batched['episode_accuracy']


@pytest.mark.parametrize('where', ['support', 'query'])
def test_nonfinite_features_name_their_episode_within_a_chunk(cfg, where):
    "A NaN video first seen in episode j > 0 of a chunk: the error names episode j (logits for a support video, PPS guard for a query)."
    torch.manual_seed(0)
    model = M2DF(cfg).eval()
    _, specs = episodes_of(cfg, 'val', 8)
    queries = {r.path for s in specs for r in s.query}
    seen = set()                                     # the videos of the episodes before
    for s in specs:
        new = [r.path for r in getattr(s, where) if r.path not in seen and (where == 'query' or r.path not in queries)]
        if s.index > 0 and new: j, path = s.index, new[0]; break
        seen |= {r.path for r in s.support + s.query}
    cache = random_feature_cache(model, cfg, 'val')
    cache.mem[feature_key(model, cfg, 'val')][path] = torch.full((cfg.frames, model.dim), float('nan'))
    what = 'logits' if where == 'support' else 'query frame features'
    for chunk in (1, 8):
        with pytest.raises(FloatingPointError, match=f'non-finite {what} at val episode {j}\\b'):
            evaluate(model, cfg, 'val', n_episodes=8, cache=cache, chunk=chunk)


def test_chunk_must_be_positive(model, cfg, shared):
    with pytest.raises(ValueError, match='eval_chunk'): evaluate(model, cfg, 'val', n_episodes=2, cache=shared, chunk=0)
    with pytest.raises(ValueError, match="'eval_chunk'"): cfg.replace(eval_chunk=0)


@pytest.mark.parametrize('name', ['paper', 'reference'])
def test_pps_true_top_counts_the_queries_whose_pi_peaks_on_their_own_class(name):
    "pps_true_top: % of queries whose π has its largest mass on their true class; known by construction, None with PPS off."
    cfg = preset_cfg(name)
    torch.manual_seed(0)
    model = M2DF(cfg).eval()
    sp = benchmark_split(cfg, 'val')
    text = model.class_text(sp.class_names).detach()
    # every frame of a video is its own class's text (π peaks on that class) for half of the videos, minus it for the
    # other half (the least similar class, never the peak)
    sign = {r.path: (1. if i % 2 == 0 else -1.) for i, r in enumerate(sp.videos)}
    cache = FeatureCache()
    cache.mem[feature_key(model, cfg, 'val')] = {r.path: sign[r.path] * text[r.label].expand(cfg.frames, -1).clone() for r in sp.videos}
    r = evaluate(model, cfg, 'val', n_episodes=10, cache=cache, chunk=3)
    _, specs = episodes_of(cfg, 'val', 10)
    expected = [sum(sign[q.path] > 0 for q in s.query) / len(s.query) for s in specs]
    assert r['pps_episode_true_top'] == pytest.approx(expected)
    assert 0 < np.mean(expected) < 1, 'all or none of the queries: the count would not be tested'
    assert r['pps_true_top'] == pytest.approx(100 * np.mean(expected))
    assert r['pps_true_top_ci95'] == pytest.approx(100 * 1.96 * np.std(expected) / math.sqrt(10))
    off = evaluate(M2DF(preset_cfg('paper', use_pps=False)).eval(), preset_cfg('paper', use_pps=False), 'val', n_episodes=2,
                   cache=random_feature_cache(model, cfg, 'val'))
    assert off['pps_true_top'] is None and off['pps_episode_true_top'] is None

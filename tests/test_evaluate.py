"Tests of m2df.evaluate: the feature cache changes nothing but the time, fixed episodes, the 95% CI, per-class accuracy, cache keys."
import copy, itertools, math
from collections import Counter

import numpy as np
import pytest
import torch

import m2df.evaluate as E
from m2df.config import make_config
from m2df.episodes import episode_loader
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
    assert len(torch.load(files[0], weights_only=True)) == n_unique
    # a training step leaves a frozen backbone, hence the key, unchanged: the next validation encodes nothing
    first.train_step(list(itertools.islice(first.batches(0), first.per_rank)))
    encode_calls.clear()
    assert first.validate()['val_accuracy'] >= 0 and encode_calls == []
    # a new learner on the same run folder (a new process) reads them from disk
    second = Learner(cfg, tmp_path / 'run', resume=False, progress=False)
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
    c = cfg.replace(pps_eval_mode='sample', logit_scale=50.)
    torch.manual_seed(0)
    model, shared = M2DF(c).eval(), FeatureCache()
    draws = []
    model.pps.register_forward_hook(lambda mod, args, out: draws.append(out[0].detach().clone()))   # the query prompts
    torch.manual_seed(1); a = evaluate(model, c, 'val', n_episodes=8, cache=shared)
    first, draws[:] = list(draws), []
    torch.manual_seed(2); torch.rand(5); b = evaluate(model, c, 'val', n_episodes=8, cache=shared)
    assert a['episode_accuracy'] == b['episode_accuracy']
    assert len(first) == 8 and all(torch.equal(x, y) for x, y in zip(first, draws)), 'the sampled prompts differ'
    state = torch.get_rng_state()
    evaluate(model, c, 'val', n_episodes=2, cache=shared)
    assert torch.equal(state, torch.get_rng_state()), 'evaluation must leave the training random state alone'

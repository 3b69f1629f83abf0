"""Behaviour tests of the statistics in m2df.artifacts (issue 23): every CI formula against a second, naive implementation and
hand-computed values, both signs of a paired difference, unequal seed sets, and the captions built from these numbers."""
import json, math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import m2df.artifacts as art
from m2df.artifacts import (VARIANTS, CPU_BUDGET, run_path, collect_runs, seed_summary, paired_to_reference, crossed_mean_ci95,
                            seed_ci95, fmt_acc, describe_runs, differences_sentence, ablation_markdown)


def write_run(root, variant, acc, train_seed=0, per_class=None, dataset='synthetic'):
    "A finished run folder (config.json, test.json) of `variant` with per-episode accuracies `acc` (fractions)."
    cfg = VARIANTS[variant].config(dataset, eval_seed=2024, seed=train_seed, **CPU_BUDGET[dataset])
    d = run_path(root, cfg); d.mkdir(parents=True)
    (d / 'config.json').write_text(json.dumps(cfg.to_dict()))
    acc = [float(a) for a in acc]
    (d / 'test.json').write_text(json.dumps(dict(split='test', episodes=len(acc), way=5, shot=cfg.shot, query=1, seed=2024,
                                                 accuracy=100 * float(np.mean(acc)), ci95=0., episode_accuracy=acc,
                                                 per_class=per_class or {})))
    return d


# ---- a second, naive implementation of the crossed-design interval: loops, variance components, Satterthwaite

def naive_crossed(x):
    "(mean, half-width, df) of the mean of the S×E matrix `x` with seeds and episodes random and crossed (no interaction term)."
    x = [list(map(float, row)) for row in x]
    S, E = len(x), len(x[0])
    grand = sum(sum(r) for r in x) / (S * E)
    if S == 1:                                            # one run: 1.96·σ/√n over its episodes (population σ)
        v = x[0]; mu = sum(v) / E
        return mu, 1.96 * math.sqrt(sum((a - mu) ** 2 for a in v) / E) / math.sqrt(E), math.inf
    rows = [sum(r) / E for r in x]
    cols = [sum(x[s][e] for s in range(S)) / S for e in range(E)]
    if E == 1:                                            # one episode: Student's t over the seeds
        sd = math.sqrt(sum((r - grand) ** 2 for r in rows) / (S - 1))
        return grand, stats.t.ppf(0.975, S - 1) * sd / math.sqrt(S), S - 1
    ss_s = sum(E * (r - grand) ** 2 for r in rows)
    ss_e = sum(S * (c - grand) ** 2 for c in cols)
    ss_r = sum((x[s][e] - rows[s] - cols[e] + grand) ** 2 for s in range(S) for e in range(E))
    df_s, df_e, df_r = S - 1, E - 1, (S - 1) * (E - 1)
    ms_s, ms_e, ms_r = ss_s / df_s, ss_e / df_e, ss_r / df_r
    var_s = max(0., (ms_s - ms_r) / E)                    # expected mean squares: E[MS_S] = σr² + E·σs², E[MS_E] = σr² + S·σe²
    var_e = max(0., (ms_e - ms_r) / S)
    var_r = ms_r
    V = var_s / S + var_e / E + var_r / (S * E)           # variance of the grand mean
    if V <= 0: return grand, 0., math.inf
    # V·S·E = (MS_S - MS_R)·[σs² > 0] + (MS_E - MS_R)·[σe² > 0] + MS_R: Satterthwaite over the mean squares it combines
    a_s, a_e = float(var_s > 0), float(var_e > 0)
    parts = [(a_s * ms_s, df_s), (a_e * ms_e, df_e), ((1 - a_s - a_e) * ms_r, df_r)]
    df = (V * S * E) ** 2 / sum(c ** 2 / d for c, d in parts if c)
    return grand, stats.t.ppf(0.975, df) * math.sqrt(V), df


def test_naive_reference_on_a_hand_case():
    "The naive implementation itself, on a 2×3 matrix worked out by hand."
    x = [[3., 5., 7.], [1., 3., 8.]]
    # grand 4.5; seed means 5, 4 -> MS_S = 3·(0.25 + 0.25)/1 = 1.5; episode means 2, 4, 7.5 -> MS_E = 2·(6.25 + 0.25 + 9)/2 = 15.5
    # residuals (x - r - c + m): [[0.5, 0.5, -1], [-0.5, -0.5, 1]] -> MS_R = 3/2 = 1.5
    # σs² = max(0, (1.5 - 1.5)/3) = 0, σe² = (15.5 - 1.5)/2 = 7, σr² = 1.5 -> V = 7/3 + 1.5/6 = 2.5833...
    # V·S·E = MS_E = 15.5 (seed component 0: only the episodes' mean square) -> df = 2
    m, h, df = naive_crossed(x)
    assert m == 4.5 and df == pytest.approx(2.)
    assert h == pytest.approx(stats.t.ppf(0.975, 2) * math.sqrt(15.5 / 6))
    m2, h2, df2 = crossed_mean_ci95(np.array(x))
    assert (m2, df2) == pytest.approx((4.5, 2.)) and h2 == pytest.approx(h, rel=1e-12)


@pytest.mark.parametrize('case', ['all_components', 'seed_component_negative', 'episode_component_negative', 'both_negative'])
def test_crossed_ci_matches_the_naive_implementation(case):
    rng = np.random.default_rng(11)
    S, E = 3, 7
    if case == 'all_components':
        x = 40 + rng.normal(0, 6, (S, 1)) + rng.normal(0, 10, (1, E)) + rng.normal(0, 3, (S, E))
    elif case == 'seed_component_negative':                # seed means nearly equal: MS_S < MS_R
        x = 40 + rng.normal(0, 10, (1, E)) + rng.normal(0, 5, (S, E)); x -= x.mean(1, keepdims=True) - 40
    elif case == 'episode_component_negative':             # episode means nearly equal: MS_E < MS_R
        x = 40 + rng.normal(0, 8, (S, 1)) + rng.normal(0, 5, (S, E)); x -= x.mean(0, keepdims=True) - 40
    else:
        x = rng.normal(0, 5, (S, E)); x -= x.mean(1, keepdims=True); x -= x.mean(0, keepdims=True); x += 40
    m, h, df = crossed_mean_ci95(x)
    m0, h0, df0 = naive_crossed(x)
    assert m == pytest.approx(m0, rel=1e-12)
    assert h == pytest.approx(h0, rel=1e-9), (case, h, h0)
    assert df == pytest.approx(df0, rel=1e-9), (case, df, df0)


def test_crossed_ci_pinned_values():
    "A 3 seeds × 4 episodes case with all three components positive, against numbers worked out from the mean squares."
    x = np.array([[60., 40., 80., 20.], [50., 40., 60., 30.], [80., 50., 90., 60.]])
    # grand 55; seed means 50, 45, 70 -> MS_S = 4·(25 + 100 + 225)/2 = 700
    # episode means 190/3, 130/3, 230/3, 110/3 -> Σ(c - 55)² = (25² + 35² + 65² + 55²)/9 = 9100/9 -> MS_E = 3·(9100/9)/3 = 9100/9
    # residual SS = 1400/3 -> MS_R = (1400/3)/6 = 700/9; V·12 = MS_S + MS_E - MS_R = 700 + 8400/9 = 4900/3
    m, h, df = crossed_mean_ci95(x)
    assert m == pytest.approx(55.)
    df_hand = (4900 / 3) ** 2 / (700 ** 2 / 2 + (9100 / 9) ** 2 / 3 + (700 / 9) ** 2 / 6)
    assert df == pytest.approx(df_hand, rel=1e-9)
    assert h == pytest.approx(stats.t.ppf(0.975, df_hand) * math.sqrt(4900 / 3 / 12), rel=1e-9)
    assert h != pytest.approx(1.96 * math.sqrt(4900 / 3 / 12), rel=1e-3)     # the t quantile, not the normal one


def test_one_episode_and_one_seed_intervals():
    r = np.array([[30.], [50.], [70.], [40.]])                  # 4 seeds, 1 episode: t(3)·s/√4 with s the sample sd
    m, h, df = crossed_mean_ci95(r)
    s = math.sqrt(((30 - 47.5) ** 2 + 2.5 ** 2 + 22.5 ** 2 + 7.5 ** 2) / 3)
    assert (m, df) == (47.5, 3.) and h == pytest.approx(stats.t.ppf(0.975, 3) * s / 2, rel=1e-12)
    m, h, df = crossed_mean_ci95(np.array([[0., 100., 100., 100.]]))   # one seed: 1.96·σ/√n, σ the population sd
    assert (m, df) == (75., math.inf) and h == pytest.approx(1.96 * math.sqrt(1875) / 2, rel=1e-12)


def test_seed_ci95_is_student_t_over_the_seeds():
    v = [41., 47., 44.]
    s = math.sqrt(((41 - 44) ** 2 + 9 + 0) / 2)                # sample sd 3
    assert seed_ci95(v) == pytest.approx(stats.t.ppf(0.975, 2) * s / math.sqrt(3), rel=1e-12)
    assert seed_ci95(v) == pytest.approx(4.302652729911275 * 3 / math.sqrt(3), rel=1e-9)
    assert math.isnan(seed_ci95([41.]))


@pytest.fixture
def unequal_runs(tmp_path):
    "The full model on seeds 0, 1, 2 and PPS-off on seeds 1, 2 only, on the same 6 episodes; PPS off is clearly worse."
    full = np.array([[1, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 1]], float)
    off = {1: np.array([0, 0, 1, 0, 0, 0], float), 2: np.array([0, 0, 0, 1, 0, 0], float)}
    pcs = {0: {'a': 0.2, 'b': 0.9}, 1: {'a': 0.4, 'b': 0.5}, 2: {'a': 0.9, 'b': 0.1}}
    dirs = [write_run(tmp_path, 'full', full[s], s, pcs[s]) for s in range(3)]
    dirs += [write_run(tmp_path, 'no_pps', off[s], s) for s in (1, 2)]
    return collect_runs(dirs), full, off


def test_seed_summary_every_interval_by_hand(unequal_runs):
    runs, full, off = unequal_runs
    sm = seed_summary(runs).set_index('variant')
    f, o = sm.loc['full'], sm.loc['no_pps']
    assert f.seeds == (0, 1, 2) and o.seeds == (1, 2) and f.n_seeds == 3
    X = 100 * full
    m0, h0, _ = naive_crossed(X)
    assert f.accuracy == pytest.approx(m0) and f.ci95 == pytest.approx(h0, rel=1e-9)
    r = X.mean(1)                                                 # per-seed accuracies 66.67, 83.33, 66.67
    assert f.ci95_seeds == pytest.approx(stats.t.ppf(0.975, 2) * np.std(r, ddof=1) / math.sqrt(3), rel=1e-9)
    c = X.mean(0)                                                 # per-episode means over the seeds
    assert f.ci95_episodes == pytest.approx(1.96 * np.std(c) / math.sqrt(6), rel=1e-9)
    assert f.per_class == pytest.approx({'a': 0.5, 'b': 0.5})     # the mean over the seeds, class by class
    # Δ paired on the seeds both settings have (1 and 2), episode by episode
    D = 100 * np.stack([off[1] - full[1], off[2] - full[2]])
    d0, dh0, _ = naive_crossed(D)
    assert o.delta_seeds == 2
    assert o.delta == pytest.approx(d0) and o.delta == pytest.approx(100 * (2 / 12 - 9 / 12))
    assert o.delta_ci95 == pytest.approx(dh0, rel=1e-9)
    assert o.delta_ci95_seeds == pytest.approx(stats.t.ppf(0.975, 1) * np.std(D.mean(1), ddof=1) / math.sqrt(2), rel=1e-9)
    assert o.delta_ci95_episodes == pytest.approx(1.96 * np.std(D.mean(0)) / math.sqrt(6), rel=1e-9)


def test_a_significant_drop_is_resolved_and_said_so(unequal_runs):
    runs, _, _ = unequal_runs
    sm = seed_summary(runs)
    o = sm.set_index('variant').loc['no_pps']
    assert o.delta < 0 and abs(o.delta) > o.delta_ci95 and o.resolved
    assert not sm.set_index('variant').loc['full', 'resolved']
    text = differences_sentence(sm)
    assert text.startswith('Differences to CLIP-M²DF (full) outside their 95% CI: PPS off (zero prompt) -58.3 ± '), text
    assert 'Inside' not in text
    cap = describe_runs(runs)
    assert 'outside their 95% CI: PPS off (zero prompt) -58.3' in cap and 'two-way crossed' in cap, cap
    assert '5 training runs of 2 settings (seeds per setting: 0, 1, 2; 1, 2)' in cap, cap
    md = ablation_markdown(runs)
    assert f'(Δ {fmt_acc(o.delta, o.delta_ci95, signed=True)})' in md and '(Δ -58.3 ± ' in md


def test_a_drop_inside_its_ci_is_not_resolved(tmp_path):
    "Both signs: a small drop and a small gain, each inside its CI, are both listed as inside."
    a = np.array([1, 0, 1, 1, 0, 1, 0, 1], float)
    worse, better = a.copy(), a.copy()
    worse[0] = 0; better[1] = 1
    runs = collect_runs([write_run(tmp_path, 'full', a), write_run(tmp_path, 'no_pps', worse), write_run(tmp_path, 'no_distill', better)])
    sm = seed_summary(runs).set_index('variant')
    assert sm.loc['no_pps', 'delta'] == pytest.approx(-12.5) and sm.loc['no_distill', 'delta'] == pytest.approx(12.5)
    assert not sm.loc['no_pps', 'resolved'] and not sm.loc['no_distill', 'resolved']


def test_two_seeds_are_captioned_as_a_crossed_design(tmp_path):
    rng = np.random.default_rng(5)
    runs = collect_runs([write_run(tmp_path, 'full', rng.integers(0, 2, 6), s) for s in (0, 1)])
    cap = describe_runs(runs)
    assert '1 setting × 2 training seeds (0, 1) = 2 training runs' in cap and 'two-way crossed' in cap, cap
    runs1 = collect_runs([write_run(tmp_path / 'one', 'full', rng.integers(0, 2, 6), 0)])
    assert '1.96·σ/√n' in describe_runs(runs1)


def test_single_run_paired_difference_both_signs(tmp_path):
    ref = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], float)
    low = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 0], float)      # 4 episodes lower: Δ = -40
    high = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], float)     # 2 episodes higher: Δ = +20
    runs = collect_runs([write_run(tmp_path, 'full', ref), write_run(tmp_path, 'no_pps', low), write_run(tmp_path, 'no_distill', high)])
    p = paired_to_reference(runs).set_index('variant')
    d = low - ref
    assert p.loc['no_pps', 'delta'] == pytest.approx(-40.) and p.loc['no_distill', 'delta'] == pytest.approx(20.)
    assert p.loc['no_pps', 'delta_ci95'] == pytest.approx(100 * 1.96 * np.std(d) / math.sqrt(10), rel=1e-12)
    assert p.loc['full', 'delta'] == 0.
    sm = seed_summary(runs).set_index('variant')
    assert sm.loc['no_pps', 'delta'] == pytest.approx(-40.) and sm.loc['no_pps', 'resolved']


def test_signed_format_keeps_the_sign():
    assert fmt_acc(-2.345, 1.04, signed=True) == '-2.3 ± 1.0'
    assert fmt_acc(2.345, 1.04, signed=True) == '+2.3 ± 1.0'
    assert fmt_acc(45.26, 1.34) == '45.3 ± 1.3'
    assert fmt_acc(float('nan'), 1.) == ''


# ---- PPS: the share of queries whose π peaks on their true class, over seeds (issue 22)

def test_pps_frame_over_seeds_against_the_naive_crossed_interval(tmp_path):
    "pps_frame: every seed's per-episode shares, mean and crossed 95% CI as the naive implementation; PPS off has no row."
    tops = {0: [1, 0, .5, 1, 0, 0, 1, .5], 1: [1, 1, .5, 0, 0, 1, 1, 1], 2: [0, 0, 0, .5, 1, 0, 0, 0]}
    for s, t in tops.items():
        d = write_run(tmp_path, 'full', [.2] * 8, train_seed=s)
        rec = json.loads((d / 'test.json').read_text())
        rec.update(pps_true_top=100 * float(np.mean(t)), pps_episode_true_top=[float(a) for a in t])
        (d / 'test.json').write_text(json.dumps(rec))
    write_run(tmp_path, 'no_pps', [.2] * 8)
    runs = collect_runs(sorted(p.parent for p in tmp_path.rglob('test.json')))
    pf = art.pps_frame(runs)
    assert list(pf.variant) == ['full'] and pf.seeds.iloc[0] == (0, 1, 2) and pf.chance.iloc[0] == 20.
    m, h, _ = naive_crossed([[100 * a for a in tops[s]] for s in (0, 1, 2)])
    assert pf.pps_true_top.iloc[0] == pytest.approx(m) and pf.ci95.iloc[0] == pytest.approx(h)
    assert m == pytest.approx(100 * 11 / 24)               # by hand: 4 + 5.5 + 1.5 = 11 queries' worth of 24 episodes


def test_pps_table_keeps_each_benchmarks_settings_apart(tmp_path):
    "Two benchmarks' runs of one variant: one row each, named by benchmark, each with its own share and accuracy (by hand)."
    for ds, acc, top in (('synthetic', [1, 0, 1, 1], [1, 0, 0, 0]), ('world', [0, 0, 1, 0], [1, 1, 1, .5])):
        d = write_run(tmp_path, 'full', acc, dataset=ds)
        rec = json.loads((d / 'test.json').read_text())
        rec.update(pps_true_top=100 * float(np.mean(top)), pps_episode_true_top=[float(a) for a in top])
        (d / 'test.json').write_text(json.dumps(rec))
    pf = art.pps_frame(collect_runs(sorted(p.parent for p in tmp_path.rglob('test.json'))))
    tab = art.pps_table(pf.sort_values('dataset'), {'before training': dict(pps_true_top=20., pps_true_top_ci95=0.5, accuracy=21.25, ci95=3.)},
                        head_seed=4)
    share = 'π peaks on the true class, %'
    assert tab.setting.tolist() == ['before training', 'trained: CLIP-M²DF (full), synthetic', 'trained: CLIP-M²DF (full), world']
    assert tab.seeds.tolist() == ['head seed 4', '0', '0']
    assert [c.split(' ± ')[0] for c in tab[share]] == ['20.0', '25.0', '87.5']
    assert [c.split(' ± ')[0] for c in tab['accuracy %']] == ['21.2', '75.0', '25.0']
    # one run, four episodes: 1.96·σ/√4 over the episodes (population σ), by hand for the world's accuracies 0, 0, 100, 0
    assert tab['accuracy %'].iloc[2] == f'25.0 ± {1.96 * math.sqrt(1875) / 2:.1f}'


def test_captions_say_which_differences_the_runs_cannot_resolve():
    "Inside its CI: 'do not show' when the CI is at most ±1.5 points (the boundary included), 'cannot resolve' when wider; outside: resolved."
    rows = [dict(variant='full', label='CLIP-M²DF (full)', dataset='world', shot=1, delta=0., delta_ci95=0., resolved=False),
            dict(variant='no_pps', label='PPS off (zero prompt)', dataset='world', shot=1, delta=-1.2, delta_ci95=1.5, resolved=False),
            dict(variant='no_distill', label='distillation off', dataset='world', shot=1, delta=1.0, delta_ci95=1.51, resolved=False),
            dict(variant='clipfsar', label='CLIP-FSAR-style single view', dataset='world', shot=1, delta=-7.5, delta_ci95=2.9, resolved=True)]
    text = art.differences_sentence(pd.DataFrame(rows))
    assert text == ('Differences to CLIP-M²DF (full) outside their 95% CI: CLIP-FSAR-style single view -7.5 ± 2.9. '
                    'Inside their 95% CI, so these runs do not show a difference to CLIP-M²DF (full): PPS off (zero prompt) -1.2 ± 1.5. '
                    'Inside their 95% CI and wider than ±1.5 points, so these runs cannot resolve a difference to CLIP-M²DF (full) '
                    'in either direction: distillation off +1.0 ± 1.5.'), text

"""Behaviour tests of the learner's training length (issue 23): `episodes` not a multiple of `accumulation` is rounded up to
whole optimiser steps, validation follows the episode count across such steps, and the logged learning rate is the step's."""
import csv, json, math

import pytest

from m2df.learner import Learner
from conftest import tiny


@pytest.mark.parametrize('episodes, accumulation, steps', [(5, 2, 3), (6, 2, 3), (7, 3, 3), (1, 4, 1), (8, 8, 1), (9, 8, 2)])
def test_total_steps_round_up_to_whole_steps(tmp_path, episodes, accumulation, steps):
    lr = Learner(tiny(episodes=episodes, accumulation=accumulation), tmp_path / 'run', progress=False)
    assert (lr.per_rank, lr.per_step, lr.total_steps) == (accumulation, accumulation, steps)
    assert lr.total_steps * lr.per_step >= episodes > (lr.total_steps - 1) * lr.per_step


def test_cosine_schedule_runs_over_optimiser_steps(tmp_path):
    lr = Learner(tiny(episodes=7, accumulation=2, schedule='cosine', lr=1e-3), tmp_path / 'run', progress=False)
    assert lr.total_steps == 4
    want = [0.5 * 1e-3 * (1 + math.cos(math.pi * k / 4)) for k in range(6)]   # k = 4, 5: the end of the schedule, 0
    assert [lr.lr_at(k) for k in range(6)] == pytest.approx(want[:4] + [0., 0.], abs=1e-15)


def test_a_run_of_five_episodes_in_steps_of_two(tmp_path):
    "5 episodes, 2 per step: 3 steps (6 episodes), validated when the count crosses 3 (at 4) and at the end (6)."
    cfg = tiny(episodes=5, accumulation=2, val_every=3, val_episodes=2, test_episodes=2, query=1, schedule='cosine', lr=1e-3)
    lr = Learner(cfg, tmp_path / 'run', progress=False)
    res = lr.fit(test=False)
    assert (res['steps'], res['episodes']) == (3, 6)
    with open(tmp_path / 'run' / 'metrics.csv', newline='') as fh: rows = list(csv.DictReader(fh))
    assert [(int(r['step']), int(r['episode'])) for r in rows] == [(1, 2), (2, 4), (3, 6)]
    assert [float(r['lr']) for r in rows] == pytest.approx([0.5 * 1e-3 * (1 + math.cos(math.pi * k / 3)) for k in range(3)])
    val = [json.loads(l) for l in (tmp_path / 'run' / 'val.jsonl').read_text().splitlines()]
    assert [(v['step'], v['episode']) for v in val] == [(2, 4), (3, 6)]

"""Behaviour tests of m2df.episodes (issue 23): every support and query video of an episode draws its own augmentation from
(seed, rank, episode, position), classes with exactly shot + query videos, and deterministic evaluation clips."""
import numpy as np
import pytest
import torch
from PIL import Image

from m2df.episodes import EpisodeDataset, EpisodeSampler, VideoClipDataset
from m2df.splits import load_split
from m2df.video import sample_indices

N_FRAMES = 12


@pytest.fixture
def data(tmp_path):
    "A synthetic-layout benchmark: 3 classes × 4 videos of 12 frame images (frame i filled with 20·i), its train split."
    lines = []
    for c in range(3):
        for v in range(4):
            d = tmp_path / 'videos' / f'c{c}' / f'v{v}'; d.mkdir(parents=True)
            for i in range(N_FRAMES): Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(d / f'{i + 1:05d}.png')
            lines.append(f'c{c}/v{v}')
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits' / 'train.txt').write_text('\n'.join(lines) + '\n')
    return tmp_path / 'videos', load_split('synthetic', 'train', splits_dir=tmp_path / 'splits')


class DrawRecorder:
    "A transform that returns the next number its random generator would give: which generator each clip was handed."
    def __call__(self, frames, rng): return torch.tensor([int(rng.integers(1 << 62))])


def expected_draw(seed, rank, index, position, T):
    "The generator of clip `position` (support first, then query) of episode `index`: frames are sampled, then the transform draws."
    g = np.random.default_rng([seed, rank, index, position])
    sample_indices(N_FRAMES, T, True, g)
    return int(g.integers(1 << 62))


@pytest.mark.parametrize('rank', [0, 1])
def test_support_and_query_draw_their_own_augmentations(data, rank):
    root, split = data
    way, shot, query, seed, T = 3, 2, 2, 7, 4
    sampler = EpisodeSampler(split, way, shot, query, seed=seed, rank=rank)
    ds = EpisodeDataset(sampler, root, T, DrawRecorder(), True, n_episodes=3, start=5)
    all_draws = []
    for i in range(3):
        ep = ds[i]
        assert ep['index'] == 5 + i
        s, q = ep['support'].view(-1).tolist(), ep['query'].view(-1).tolist()
        assert s == [expected_draw(seed, rank, 5 + i, k, T) for k in range(way * shot)]
        assert q == [expected_draw(seed, rank, 5 + i, way * shot + k, T) for k in range(way * query)]
        assert len(set(s + q)) == len(s + q)                 # no two videos of an episode share their draws
        all_draws += s + q
    assert len(set(all_draws)) == len(all_draws)             # nor two episodes


def test_query_clips_are_not_cropped_like_the_support(data):
    "With the real transform: the query videos' frame positions are drawn apart from the support's (same seed, same episode)."
    root, split = data
    sampler = EpisodeSampler(split, 3, 1, 1, seed=0)
    ds = EpisodeDataset(sampler, root, 4, None, True, n_episodes=4)
    for i in range(4):
        ep = ds[i]
        frames = lambda x: (x[:, :, 0, 0, 0].long() // 20).tolist()     # sampled frame indices of each clip
        sup, qry = frames(ep['support']), frames(ep['query'])
        g = lambda k: sample_indices(N_FRAMES, 4, True, np.random.default_rng([0, 0, i, k])).tolist()
        assert sup == [g(k) for k in range(3)] and qry == [g(3 + k) for k in range(3)]


def test_classes_with_exactly_shot_plus_query_videos_are_used(data):
    _, split = data                                          # 4 videos per class
    s = EpisodeSampler(split, 3, 2, 2, seed=0)
    assert s.classes.tolist() == [0, 1, 2]
    assert sorted(s.episode(0).class_ids) == [0, 1, 2]
    with pytest.raises(ValueError, match=r'3 class\(es\) have fewer than shot\+query = 2\+3 = 5 videos'):
        EpisodeSampler(split, 3, 2, 3, seed=0)


def test_evaluation_clips_take_the_centre_of_each_segment(data):
    root, split = data
    ds = VideoClipDataset(split.videos[:3], root, 4, None)
    for i in range(3):
        clip, path = ds[i]
        assert path == split.videos[i].path
        # 12 frames, 4 segments of 3: the centre frames 1, 4, 7, 10
        assert (clip[:, 0, 0, 0].long() // 20).tolist() == [1, 4, 7, 10]

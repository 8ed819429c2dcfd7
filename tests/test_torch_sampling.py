"""torch_reference.sampling: box entry, per-ray jitter, in-box flags, normalisation."""

from __future__ import annotations

import torch

from torch_reference.sampling import (
    in_aabb,
    normalize_coord,
    ray_aabb_hit,
    ray_aabb_tmin,
    sample_ray,
    sample_ray_ndc,
)

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_tmin_is_the_entry_distance_clamped_to_near_far():
    o = torch.tensor([[-3.0, 0.1, 0.2], [-3.0, 0.1, 0.2], [0.0, 0.0, 0.0], [0.0, 0.0, -5.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    t = ray_aabb_tmin(o, d, AABB, near=0.5, far=3.5)
    # entry at x=-1 -> 2.0; same ray clamped to near 2.5; origin inside -> max(negative, ...) clamped to near;
    # entry at z=-1 from -5 -> 4.0, clamped to far 3.5
    torch.testing.assert_close(t, torch.tensor([2.0, 2.0, 0.5, 3.5]))
    assert float(ray_aabb_tmin(o[:1], d[:1], AABB, near=2.5, far=6.0)[0]) == 2.5


def test_hit_test_unclamped():
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 2.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert ray_aabb_hit(o, d, AABB).tolist() == [True, False]


def test_sample_ray_eval_steps_from_entry():
    o = torch.tensor([[-3.0, 0.1, 0.2]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    z, xyz, inside = sample_ray(o, d, AABB, 0.1, 6.0, step_size=0.25, n_samples=12)
    assert z.shape == (1, 12) and xyz.shape == (1, 12, 3) and inside.shape == (1, 12)
    torch.testing.assert_close(z[0], 2.0 + 0.25 * torch.arange(12.0))
    torch.testing.assert_close(xyz[0, :, 0], -1.0 + 0.25 * torch.arange(12.0))
    # x = -1 .. 1 inclusive are inside (9 samples), the rest (x > 1) are not; no far cut-off
    assert inside[0].tolist() == [True] * 9 + [False] * 3


def test_sample_ray_one_jitter_per_ray():
    o = torch.tensor([[-3.0, 0.0, 0.0], [0.0, -3.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    jitter = torch.tensor([0.25, 0.75])
    z, _, _ = sample_ray(o, d, AABB, 0.1, 6.0, 0.5, 6, jitter=jitter)
    base, _, _ = sample_ray(o, d, AABB, 0.1, 6.0, 0.5, 6)
    torch.testing.assert_close(z - base, (0.5 * jitter)[:, None].expand(2, 6))
    torch.testing.assert_close(z[:, 1:] - z[:, :-1], torch.full((2, 5), 0.5))


def test_in_aabb_and_normalize():
    pts = torch.tensor([[1.0, 1.0, 1.0], [1.0001, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    assert in_aabb(pts, AABB).tolist() == [True, False, True]
    box = torch.tensor([[-1.0, 0.0, 2.0], [3.0, 1.0, 6.0]])
    got = normalize_coord(torch.tensor([[-1.0, 0.0, 2.0], [3.0, 1.0, 6.0], [1.0, 0.5, 4.0]]), box)
    torch.testing.assert_close(got, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))


def test_ndc_sampling_shares_the_per_sample_jitter():
    o = torch.zeros(3, 3)
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    z, _, _ = sample_ray_ndc(o, d, AABB, 0.0, 1.0, 4, jitter=torch.tensor([0.0, 0.5, 0.0, 1.0]))
    torch.testing.assert_close(z[0], torch.tensor([0.0, 1 / 3 + 0.125, 2 / 3, 1.0 + 0.25]))
    assert torch.equal(z[0], z[2])

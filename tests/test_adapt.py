"""Width and kernel-size adaptation (adapt.py), checked numerically against DESIGN.md's rules.

Each rule is checked by value or by the function a conv computes, never by re-running
the code under test: top-n by L2 norm in source order, N(0, 0.05^2) for new kernels,
input channels following the previous layer's kept kernels, the 1x1 fold map,
kernel embedding, BN vectors and per-layer seeding.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from learngene_tools.transplantation.adapt import (
    adapt_in_channels,
    adapt_vector,
    adapt_weight,
    embed_kernel,
    fold_map,
    keep_by_norm,
    layer_generator,
)

STD = 0.05  # DESIGN.md: new kernels are drawn from N(0, 0.05^2)


def _weight(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _norms(w: torch.Tensor) -> list[float]:
    return w.flatten(1).norm(dim=1).tolist()


def _top_n_in_source_order(w: torch.Tensor, n: int) -> list[int]:
    return sorted(torch.topk(w.flatten(1).norm(dim=1), n).indices.tolist())


def _assert_new_kernel_values(values: torch.Tensor, tol: float = 0.002) -> None:
    """Looks like N(0, 0.05^2): mean and std within `tol` (needs ~10^5 values for the default)."""
    assert values.numel() > 0
    assert abs(values.mean().item()) < tol
    assert abs(values.std().item() - STD) < tol


def _gen(seed: int = 0, layer: str = "s1.0") -> torch.Generator:
    return layer_generator(seed, layer)


# keep_by_norm ----------------------------------------------------------------------------------


def test_keep_by_norm_picks_the_largest_in_source_order():
    norms = [0.5, 3.0, 1.0, 2.0, 0.1]
    assert keep_by_norm(norms, 3) == [1, 2, 3]  # 3.0, 2.0, 1.0, listed as they come in the source
    assert keep_by_norm(norms, 1) == [1]
    assert keep_by_norm(norms, 5) == [0, 1, 2, 3, 4]
    assert keep_by_norm(norms, 7) == [0, 1, 2, 3, 4, None, None]


def test_keep_by_norm_matches_topk_on_random_norms():
    w = _weight(64, 16, 3, 3, seed=3)
    for n2 in (1, 7, 20, 63):
        assert keep_by_norm(_norms(w), n2) == _top_n_in_source_order(w, n2)


def test_keep_by_norm_breaks_ties_by_source_index():
    assert keep_by_norm([1.0, 2.0, 1.0, 1.0], 2) == [0, 1]
    assert keep_by_norm((1.0, 1.0, 1.0), 2) == [0, 1]


# output kernels --------------------------------------------------------------------------------


def test_more_target_kernels_copies_all_and_draws_the_rest():
    w = _weight(32, 64, 3, 3, seed=1)
    keep = keep_by_norm(_norms(w), 256)
    out = adapt_weight(w, (256, 64, 3, 3), keep, None, _gen())
    assert out.shape == (256, 64, 3, 3) and out.dtype == torch.float32
    assert torch.equal(out[:32], w)
    new = out[32:]
    _assert_new_kernel_values(new)
    assert new.abs().min() > 0 and not torch.equal(new[0], new[1])


def test_fewer_target_kernels_keeps_the_largest_norms_and_draws_nothing():
    w = _weight(64, 16, 3, 3, seed=2)
    keep = keep_by_norm(_norms(w), 20)
    a = adapt_weight(w, (20, 16, 3, 3), keep, None, _gen(0))
    b = adapt_weight(w, (20, 16, 3, 3), keep, None, _gen(1))
    assert torch.equal(a, w[_top_n_in_source_order(w, 20)])
    assert torch.equal(a, b)  # nothing random is left when every target kernel is kept


def test_half_precision_source_is_adapted_in_float32():
    w = _weight(8, 4, 3, 3, seed=4).half()
    out = adapt_weight(w, (8, 4, 3, 3), list(range(8)), None, _gen())
    assert out.dtype == torch.float32 and torch.equal(out, w.float())


# input channels along a run --------------------------------------------------------------------


def test_input_channels_follow_the_kernels_the_previous_layer_kept():
    w1, w2 = _weight(32, 3, 3, 3, seed=5), _weight(48, 32, 3, 3, seed=6)
    keep1 = keep_by_norm(_norms(w1), 24)
    keep2 = keep_by_norm(_norms(w2), 40)
    out1 = adapt_weight(w1, (24, 3, 3, 3), keep1, None, _gen(0, "s1.0"))
    out2 = adapt_weight(w2, (40, 24, 3, 3), keep2, keep1, _gen(0, "s1.1"))
    for i, s2 in enumerate(keep2):
        for j, s1 in enumerate(keep1):
            assert torch.equal(out2[i, j], w2[s2, s1]), (i, j)
    # the target pair computes what the learngene pair computes on the kernels both kept
    x = _weight(2, 3, 12, 12, seed=7)
    src_mid = F.relu(F.conv2d(x, w1, padding=1))
    dropped = torch.ones(32, dtype=torch.bool)
    dropped[keep1] = False
    src_mid[:, dropped] = 0
    src_out = F.conv2d(src_mid, w2, padding=1)[:, keep2]
    tgt_out = F.conv2d(F.relu(F.conv2d(x, out1, padding=1)), out2, padding=1)
    torch.testing.assert_close(tgt_out, src_out, rtol=1e-5, atol=1e-4)


def test_input_channels_of_new_previous_kernels_are_drawn():
    w2 = _weight(16, 8, 3, 3, seed=8)
    follow = list(range(8)) + [None] * 24  # the previous layer widened 8 -> 32
    out = adapt_weight(w2, (16, 32, 3, 3), list(range(16)), follow, _gen(0, "s1.1"))
    assert torch.equal(out[:, :8], w2)
    _assert_new_kernel_values(out[:, 8:], tol=0.006)  # 16*24*9 values


def test_follow_map_must_match_the_target_width():
    with pytest.raises(ValueError, match="follow map has 3 channels, target has 4"):
        adapt_in_channels(_weight(2, 2, 3, 3), 4, [0, 1, None], _gen())


# the 1x1 fold map ------------------------------------------------------------------------------


def test_fold_map_sums_onto_fewer_channels():
    expected = torch.tensor([
        [1.0, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [1, 0, 0, 0],
        [0, 1, 0, 0],
    ])
    assert torch.equal(fold_map(6, 4), expected)
    assert torch.equal(fold_map(3, 1), torch.ones(3, 1))


def test_fold_map_replicates_onto_more_channels_scaled_by_readers():
    m = fold_map(3, 7)  # channel 0 read by targets 0, 3, 6; channel 1 by 1, 4; channel 2 by 2, 5
    expected = torch.zeros(3, 7)
    expected[0, [0, 3, 6]] = 1 / 3
    expected[1, [1, 4]] = 1 / 2
    expected[2, [2, 5]] = 1 / 2
    torch.testing.assert_close(m, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(m.sum(dim=1), torch.ones(3))


def test_fold_map_identity_when_widths_match():
    assert torch.equal(fold_map(5, 5), torch.eye(5))


@pytest.mark.parametrize("c1,c2", [(3, 1), (6, 4), (64, 24), (4, 10), (32, 64), (64, 256)])
def test_folded_kernel_computes_the_same_function(c1, c2):
    """Fewer channels: the same response to an input replicated across channels (grey from RGB).

    More channels: the same response to a Net2Net-widened input (target channel t carries source t mod c1).
    """
    w = _weight(8, c1, 3, 3, seed=c1 * 100 + c2)
    folded = adapt_in_channels(w, c2, None, _gen())
    assert folded.shape == (8, c2, 3, 3)
    if c2 <= c1:
        x_tgt = _weight(2, c2, 9, 9, seed=11)
        x_src = x_tgt[:, torch.arange(c1) % c2]
    else:
        x_src = _weight(2, c1, 9, 9, seed=11)
        x_tgt = x_src[:, torch.arange(c2) % c1]
    torch.testing.assert_close(F.conv2d(x_tgt, folded, padding=1), F.conv2d(x_src, w, padding=1), rtol=1e-4, atol=1e-4)


def test_constant_per_channel_input_gives_the_same_response():
    w = _weight(4, 3, 3, 3, seed=12)
    grey = adapt_in_channels(w, 1, None, _gen())
    level = 0.7
    rgb = torch.full((1, 3, 5, 5), level)
    torch.testing.assert_close(F.conv2d(torch.full((1, 1, 5, 5), level), grey), F.conv2d(rgb, w))
    wide = adapt_in_channels(w, 8, None, _gen())
    x = torch.tensor([0.2, -1.0, 3.0]).view(1, 3, 1, 1).expand(1, 3, 5, 5)
    torch.testing.assert_close(F.conv2d(x[:, torch.arange(8) % 3], wide), F.conv2d(x, w))


def test_adapt_weight_folds_kept_kernels_without_a_follow_map():
    w = _weight(16, 8, 3, 3, seed=13)
    out = adapt_weight(w, (24, 32, 3, 3), keep_by_norm(_norms(w), 24), None, _gen())
    expected = torch.stack([w[:, t % 8] / 4 for t in range(32)], dim=1)  # each source channel read 4 times
    torch.testing.assert_close(out[:16], expected, rtol=0, atol=1e-7)
    _assert_new_kernel_values(out[16:], tol=0.006)


# kernel size -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k,offset", [(3, 0), (5, 1), (7, 2), (4, 0), (6, 1), (8, 2)])
def test_embed_kernel_offset(k, offset):
    w = _weight(4, 2, 3, 3, seed=14)
    out = embed_kernel(w, k, k)
    assert out.shape == (4, 2, k, k)
    assert torch.equal(out[:, :, offset : offset + 3, offset : offset + 3], w)
    around = out.clone()
    around[:, :, offset : offset + 3, offset : offset + 3] = 0
    assert not around.any()


@pytest.mark.parametrize("k", [5, 7, 11])
def test_embedded_odd_kernel_computes_the_learngene_response(k):
    w = _weight(6, 3, 3, 3, seed=15)
    x = _weight(1, 3, 16, 16, seed=16)
    torch.testing.assert_close(F.conv2d(x, embed_kernel(w, k, k), padding=k // 2), F.conv2d(x, w, padding=1))


def test_embed_kernel_refuses_a_smaller_target():
    with pytest.raises(ValueError, match="cannot embed a 3x3 kernel into 1x1"):
        embed_kernel(_weight(2, 2, 3, 3), 1, 1)


def test_adapt_weight_into_a_larger_kernel_draws_new_kernels_over_the_whole_kernel():
    w = _weight(32, 3, 3, 3, seed=17)
    out = adapt_weight(w, (64, 3, 7, 7), keep_by_norm(_norms(w), 64), None, _gen())
    assert torch.equal(out[:32, :, 2:5, 2:5], w)
    ring = torch.ones(7, 7, dtype=torch.bool)
    ring[2:5, 2:5] = False
    assert not out[:32][..., ring].any()  # kept kernels: zeros around the centre
    assert out[32:][..., ring].abs().min() > 0  # new kernels: drawn everywhere
    _assert_new_kernel_values(out[32:], tol=0.004)


def test_new_input_channels_of_kept_kernels_are_drawn_over_the_whole_kernel():
    """adapt.py: new input channels of kept kernels are N(0, 0.05^2) over the whole target kernel."""
    w = _weight(8, 4, 3, 3, seed=18)
    follow = [0, 1, 2, 3] + [None] * 12  # the previous layer of the run widened 4 -> 16
    out = adapt_weight(w, (8, 16, 5, 5), list(range(8)), follow, _gen(0, "s1.1"))
    assert torch.equal(out[:, :4, 1:4, 1:4], w)
    ring = torch.ones(5, 5, dtype=torch.bool)
    ring[1:4, 1:4] = False
    assert not out[:, :4][..., ring].any()
    border = out[:, 4:][..., ring]
    zeros = int((border == 0).sum())
    assert zeros == 0, f"{zeros} of {border.numel()} values of new input channels outside the 3x3 centre are 0"


# BN vectors ------------------------------------------------------------------------------------


def test_adapt_vector_follows_keep_and_new_kernels_keep_target_values():
    src = torch.arange(10, 18, dtype=torch.float32)
    target = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0], dtype=torch.float16)
    out = adapt_vector(src, [3, None, 0, None, 7], target)
    assert out.dtype == torch.float32
    assert out.tolist() == [13.0, -2.0, 10.0, -4.0, 17.0]
    assert target.tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0]  # the target tensor is not modified


def test_adapt_vector_uses_the_same_kernels_as_the_weight():
    w = _weight(32, 4, 3, 3, seed=19)
    running_var = torch.rand(32) + 0.5
    keep = keep_by_norm(_norms(w), 12)
    out = adapt_vector(running_var, keep, torch.ones(12))
    assert torch.equal(out, running_var[_top_n_in_source_order(w, 12)])


# seeding ---------------------------------------------------------------------------------------


def _draw(seed: int, layer: str) -> torch.Tensor:
    return torch.randn(1000, generator=layer_generator(seed, layer))


def test_layer_generator_is_seeded_by_seed_and_layer_id():
    assert torch.equal(_draw(0, "s1.0"), _draw(0, "s1.0"))
    assert not torch.equal(_draw(0, "s1.0"), _draw(0, "s1.1"))
    assert not torch.equal(_draw(0, "s1.0"), _draw(1, "s1.0"))
    assert not torch.equal(_draw(1, "s1.0"), _draw(0, "s3.0"))


def test_layer_generator_does_not_depend_on_the_global_rng_or_the_process():
    torch.manual_seed(123)
    a = _draw(7, "s3.2")
    torch.manual_seed(456)
    torch.randn(50)
    assert torch.equal(a, _draw(7, "s3.2"))
    # a stable hash of the id (not Python's per-process hash()), so bytes match across runs
    assert layer_generator(0, "s1.0").initial_seed() == zlib.crc32(b"s1.0")


def test_adapt_weight_is_deterministic_per_seed_and_layer():
    w = _weight(16, 8, 3, 3, seed=20)
    keep = keep_by_norm(_norms(w), 40)

    def run(seed: int, layer: str = "s3.0") -> torch.Tensor:
        return adapt_weight(w, (40, 8, 3, 3), keep, None, layer_generator(seed, layer))

    assert torch.equal(run(0), run(0))
    other_seed, other_layer = run(1), run(0, "s3.1")
    for other in (other_seed, other_layer):
        assert torch.equal(other[:16], run(0)[:16])  # the learngene kernels do not depend on the seed
        assert (other[16:] != run(0)[16:]).all()  # every drawn value does

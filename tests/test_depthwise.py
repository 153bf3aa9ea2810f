"""The teacher's large-kernel depthwise convs: every implementation computes what the native op computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learngene_tools.distillation.config import DistillSettings, RunOptions
from learngene_tools.distillation.depthwise import (
    AGREEMENT,
    LargeKernelDepthwise,
    choose_fastest,
    fft_depthwise_conv2d,
    is_large_depthwise,
    teacher_conv_mode,
    use_fast_depthwise,
    wall_timer,
)
from learngene_tools.errors import SettingsError


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max() / b.detach().float().abs().max())


@pytest.mark.parametrize(
    "channels,size,kernel,bias",
    [(8, (20, 17), 31, True), (4, (7, 9), 13, False), (6, (28, 28), 27, True), (3, (40, 33), 9, False)],
)
def test_fft_equals_native_conv(channels, size, kernel, bias):
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, channels, *size, generator=g)
    w = torch.randn(channels, 1, kernel, kernel, generator=g)
    b = torch.randn(channels, generator=g) if bias else None
    native = F.conv2d(x, w, b, padding=kernel // 2, groups=channels)
    fast = fft_depthwise_conv2d(x, w, b)
    assert fast.shape == native.shape and fast.dtype == native.dtype
    assert _relative_error(fast, native) < 1e-5


def test_fft_keeps_the_input_layout_and_the_autocast_dtype():
    conv = nn.Conv2d(4, 4, 15, padding=7, groups=4)
    x = torch.randn(2, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    out = fft_depthwise_conv2d(x, conv.weight, conv.bias)
    assert out.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = conv(x)
        fast = fft_depthwise_conv2d(x, conv.weight, conv.bias)
    assert fast.dtype == native.dtype == torch.bfloat16
    assert _relative_error(fast, native) < AGREEMENT


def test_which_convs_qualify():
    assert is_large_depthwise(nn.Conv2d(8, 8, 31, padding=15, groups=8))
    assert is_large_depthwise(nn.Conv2d(8, 8, 9, padding=4, groups=8, bias=False))
    assert not is_large_depthwise(nn.Conv2d(8, 8, 7, padding=3, groups=8))  # small: native is fine
    assert not is_large_depthwise(nn.Conv2d(8, 8, 31, padding=15, groups=4))  # not depthwise
    assert not is_large_depthwise(nn.Conv2d(8, 8, 31, stride=2, padding=15, groups=8))
    assert not is_large_depthwise(nn.Conv2d(8, 8, 31, padding=0, groups=8))  # not 'same'
    assert not is_large_depthwise(nn.Conv2d(8, 8, 30, padding=15, groups=8))  # even kernel
    assert not is_large_depthwise(nn.Conv2d(8, 8, 31, padding=15, groups=8, padding_mode="reflect"))


def _replknet() -> nn.Module:
    from learngene_tools.architectures.specs import build_model

    return build_model("replknet_test_tiny", seed=0).eval().requires_grad_(False)


def test_replknet_teacher_with_fft_convs_matches_native():
    model = _replknet()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    keys = list(model.state_dict())
    with torch.inference_mode():
        native = model(x)
    n = use_fast_depthwise(model, "fft", min_kernel=5)  # the tiny RepLKNet's large kernels are 7 and 5
    assert n > 0 and sum(isinstance(m, LargeKernelDepthwise) for m in model.modules()) == n
    assert list(model.state_dict()) == keys
    with torch.inference_mode():
        fast = model(x)
        with teacher_conv_mode(model, "native"):
            again = model(x)
    assert torch.equal(again, native)
    assert _relative_error(fast, native) < 1e-4


def test_auto_times_the_candidates_once_per_signature_and_a_gradient_runs_native():
    from learngene_tools.distillation import depthwise

    depthwise._CHOICES.clear()
    convs = nn.Sequential(nn.Conv2d(4, 4, 13, padding=6, groups=4), nn.Conv2d(4, 4, 13, padding=6, groups=4))
    x = torch.randn(1, 4, 12, 12)
    with torch.no_grad():
        expected = convs(x)
    assert use_fast_depthwise(convs, "auto") == 2
    with torch.no_grad():
        got = convs(x)
    assert _relative_error(got, expected) < 1e-4
    tuned = depthwise.autotuned()
    assert list(tuned) == ["1x4x12x12 k13 float32->float32 contiguous cpu"]  # both convs share one timing
    (choice,) = tuned.values()
    assert set(choice.timings_ms) == {"native", "contiguous", "channels_last", "fft"}
    assert choice.name in choice.timings_ms and all(v is not None for v in choice.timings_ms.values())
    convs[0].mode = "fft"
    y = convs(x.requires_grad_())  # a gradient is needed: native, whatever the mode
    y.sum().backward()
    assert x.grad is not None and convs[0].weight.grad is not None


def test_an_unbatched_input_runs_in_every_mode():
    from learngene_tools.distillation import depthwise

    conv = nn.Conv2d(3, 3, 11, padding=5, groups=3)
    x = torch.randn(3, 14, 10)
    with torch.no_grad():
        expected = conv(x)
        use_fast_depthwise(conv, "auto")
        for mode in ("auto", "contiguous", "channels_last", "fft"):
            conv.mode = mode
            assert _relative_error(conv(x), expected) < 1e-4, mode
    assert "3x14x10 k11 float32->float32 contiguous cpu" in depthwise.autotuned()


def test_choose_fastest_skips_a_wrong_candidate_and_keeps_the_fastest():
    reference = torch.arange(12.0).reshape(3, 4)
    candidates = {
        "native": lambda: reference.clone(),
        "wrong": lambda: reference + 1.0,  # fast but not the same output
        "slow": lambda: (torch.randn(300, 300) @ torch.randn(300, 300), reference.clone())[1],
    }
    choice = choose_fastest(candidates, reference, wall_timer)
    assert choice.timings_ms["wrong"] is None
    assert choice.name == "native"
    assert choice.timings_ms["slow"] > choice.timings_ms["native"]


def test_teacher_conv_setting_is_checked():
    with pytest.raises(SettingsError, match="RunOptions.teacher_conv must be one of") as e:
        RunOptions(teacher_conv="winograd")
    assert e.value.cli_text.startswith("--teacher-conv must be one of")  # what `lgt` prints
    with pytest.raises(SettingsError, match="--teacher-conv"):
        use_fast_depthwise(nn.Conv2d(2, 2, 9, padding=4, groups=2), "winograd")


def test_the_run_loads_its_teacher_with_the_chosen_mode(monkeypatch):
    from learngene_tools.distillation import depthwise
    from learngene_tools.distillation.loop import load_teacher

    monkeypatch.setattr(depthwise, "MIN_KERNEL", 5)

    s = DistillSettings(arch="replknet_test_tiny", img_size=64)
    teacher, _ = load_teacher(s, RunOptions(teacher_conv="fft"), torch.device("cpu"))
    modes = {m.mode for m in teacher.modules() if isinstance(m, LargeKernelDepthwise)}
    assert modes == {"fft"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["auto", "contiguous", "channels_last", "fft"])
def test_every_mode_on_cuda_agrees_with_native_in_bf16(mode):
    model = _replknet().cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        native = model(x)
        use_fast_depthwise(model, mode, min_kernel=5)
        fast = model(x)
    assert fast.dtype == native.dtype
    assert _relative_error(fast, native) < AGREEMENT

"""The frozen teacher's large-kernel depthwise convs, run the fastest way that gives the same output.

RepLKNet's 27-31 wide depthwise convs take about 93 % of its forward pass, and PyTorch's native
kernels for them are slow, and their speed depends on the memory layout: on an H100 channels_last is
three to eight times slower than the default layout (issue 10), on CPU (oneDNN) the default layout is
ten to forty times slower than channels_last. The teacher never needs their gradient, so they may
run any way that computes the same thing:

- ``native``: ``F.conv2d`` on the input as it comes;
- ``contiguous`` / ``channels_last``: ``F.conv2d`` on a copy in that layout (the output goes back to
  the input's layout);
- ``fft``: the same cross-correlation by real FFTs in float32, its cost independent of the kernel size.

``auto`` (the default) on CPU times every candidate once per input signature (shape, dtype, layout,
kernel) and keeps the fastest whose output agrees with the native op's; convs of the same signature
share the choice. On other devices ``auto`` runs ``native``: the candidates have not been measured on
a GPU yet (issue 10), and a named mode tries one there. Whenever a gradient is needed, the native
op runs.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from learngene_tools.distillation.config import TEACHER_CONV_MODES
from learngene_tools.errors import SettingsError

MIN_KERNEL = 9  # smaller depthwise kernels are fast natively, and FFT does not pay for them
AGREEMENT = 2e-2  # largest |fast - native| allowed, as a fraction of max |native| (bf16 rounding is ~4e-3)
TIMED_CALLS = 3


def is_large_depthwise(module: nn.Module, min_kernel: int | None = None) -> bool:
    """True for a plain stride-1 'same'-padded depthwise Conv2d with an odd square kernel of at least `min_kernel`."""
    if type(module) not in (nn.Conv2d, LargeKernelDepthwise):
        return False
    k = module.kernel_size
    return (
        module.groups == module.in_channels == module.out_channels
        and k[0] == k[1] >= (MIN_KERNEL if min_kernel is None else min_kernel) and k[0] % 2 == 1
        and module.stride == (1, 1) and module.dilation == (1, 1)
        and module.padding == (k[0] // 2, k[1] // 2) and module.padding_mode == "zeros"
    )


def _smooth_size(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3, 5, 7 (the sizes FFT libraries are fastest at)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _output_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the native conv would return for `x` here (autocast's when it is on)."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def kernel_spectrum(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """rfft2 of the flipped kernels (C,1,K,K) at `size`: convolving with it is cross-correlating with `weight`."""
    return torch.fft.rfft2(weight.detach().float()[:, 0].flip(-2, -1), s=size)


def fft_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         spectrum: torch.Tensor | None = None) -> torch.Tensor:
    """Stride-1, 'same'-padded depthwise cross-correlation (odd K) by FFT in float32; dtype and layout as native."""
    h, w = x.shape[-2:]
    k = weight.shape[-1]
    p = k // 2
    size = (_smooth_size(h + k - 1), _smooth_size(w + k - 1))  # linear, not circular, convolution
    if spectrum is None:
        spectrum = kernel_spectrum(weight, size)
    with torch.autocast(x.device.type, enabled=False):
        y = torch.fft.irfft2(torch.fft.rfft2(x.float(), s=size) * spectrum, s=size)[..., p : p + h, p : p + w]
        if bias is not None:
            y = y + bias.float().view(-1, 1, 1)
    return y.to(_output_dtype(x)).contiguous(memory_format=_layout_of(x))


@dataclass
class Choice:
    """What `auto` chose for one input signature, and what each candidate measured (ms; None: disagreed)."""

    name: str
    timings_ms: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Signature:
    """What decides which implementation is fastest: the input, the output dtype, the kernel."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    out_dtype: torch.dtype
    layout: torch.memory_format
    device: torch.device
    kernel: int
    bias: bool

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape))  # (N,C,H,W), or (C,H,W) unbatched
        dtypes = f"{self.dtype}->{self.out_dtype}".replace("torch.", "")
        layout = "channels_last" if self.layout == torch.channels_last else "contiguous"
        return f"{shape} k{self.kernel} {dtypes} {layout} {self.device}"


_CHOICES: dict[Signature, Choice] = {}


def autotuned() -> dict[str, Choice]:
    """What `auto` chose so far in this process, per input signature (for reports and benchmarks)."""
    return {str(sig): choice for sig, choice in _CHOICES.items()}


def choose_fastest(candidates: dict[str, Callable[[], torch.Tensor]], reference: torch.Tensor,
                   timer: Callable[[Callable[[], torch.Tensor]], float]) -> Choice:
    """The fastest candidate whose output agrees with `reference` (``native`` when none beats it)."""
    scale = float(reference.float().abs().max()) or 1.0
    timings: dict[str, float | None] = {}
    for name, run in candidates.items():
        out = run()
        agrees = out.shape == reference.shape and out.dtype == reference.dtype and \
            float((out.float() - reference.float()).abs().max()) <= AGREEMENT * scale
        timings[name] = timer(run) * 1e3 if agrees else None
    timed = {k: v for k, v in timings.items() if v is not None}
    best = min(timed, key=timed.__getitem__) if timed else "native"
    return Choice(best, timings)


def wall_timer(run: Callable[[], torch.Tensor]) -> float:
    """Seconds per call of `run` by the wall clock (CPU)."""
    t0 = time.perf_counter()
    for _ in range(TIMED_CALLS):
        run()
    return (time.perf_counter() - t0) / TIMED_CALLS


class LargeKernelDepthwise(nn.Conv2d):
    """A frozen large-kernel depthwise Conv2d that runs natively, in the default layout, or by FFT (see module doc)."""

    mode: str = "auto"

    def _native(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def _contiguous(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous()).contiguous(memory_format=_layout_of(x))

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:  # an unbatched input has no channels_last layout
            return self._contiguous(x)
        y = super().forward(x.contiguous(memory_format=torch.channels_last))
        return y.contiguous(memory_format=_layout_of(x))

    def _fft(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        size = (_smooth_size(x.shape[-2] + k - 1), _smooth_size(x.shape[-1] + k - 1))
        key = (size, x.device, self.weight._version, self.weight.data_ptr())
        cache = self.__dict__.setdefault("_spectra", {})
        if key not in cache:
            cache.clear()
            cache[key] = kernel_spectrum(self.weight, size)
        return fft_depthwise_conv2d(x, self.weight, self.bias, cache[key])

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"_{name}")(x)

    def _signature(self, x: torch.Tensor) -> Signature:
        return Signature(tuple(x.shape), x.dtype, _output_dtype(x), _layout_of(x), x.device, self.kernel_size[0],
                         self.bias is not None)

    def choice(self, x: torch.Tensor) -> str:
        """Which implementation runs for `x` (on CPU, `auto` times the candidates on the first input of its kind)."""
        if self.mode != "auto":
            return self.mode
        if x.device.type != "cpu":
            return "native"
        sig = self._signature(x)
        if sig not in _CHOICES:
            candidates = {n: (lambda n=n: self._run(n, x)) for n in TEACHER_CONV_MODES if n != "auto"}
            _CHOICES[sig] = choose_fastest(candidates, self._native(x), wall_timer)
        return _CHOICES[sig].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "native" or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return self._native(x)
        return self._run(self.choice(x), x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", teacher_conv={self.mode}"


def use_fast_depthwise(model: nn.Module, mode: str = "auto", min_kernel: int | None = None) -> int:
    """Make every large-kernel depthwise conv of a frozen `model` run as `mode` says; returns how many there are."""
    if mode not in TEACHER_CONV_MODES:
        raise SettingsError(f"--teacher-conv must be one of {', '.join(TEACHER_CONV_MODES)} (got {mode!r})")
    count = 0
    for module in model.modules():
        if is_large_depthwise(module, min_kernel):
            # The class is swapped in place (same layout, a subclass) so that parameters, hooks,
            # state_dict keys and every reference to the module stay exactly as they were.
            module.__class__ = LargeKernelDepthwise
            module.mode = mode
            count += 1
    return count


@contextlib.contextmanager
def teacher_conv_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Temporarily run the model's large-kernel depthwise convs as `mode` (for benchmarks and comparisons)."""
    convs = [m for m in model.modules() if isinstance(m, LargeKernelDepthwise)]
    saved = [m.mode for m in convs]
    for m in convs:
        m.mode = mode
    try:
        yield
    finally:
        for m, s in zip(convs, saved):
            m.mode = s

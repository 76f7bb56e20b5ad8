"""The small-row matmul: decode and verification passes multiply a few rows by every weight, at the memory bound.

A target pass over k + 1 tokens costs about what a 1-token pass costs only if its matmuls stream each weight once
and apply it to all k + 1 rows; the library GEMMs do not for so few rows (README, *Verification at the memory
bound*). ``small_rows.cpp`` does: weights prepacked once into 16-wide panels contiguous over the input dimension,
one register accumulator per row, AVX-512 or AVX2+FMA chosen at run time by what the CPU has, and a portable loop
elsewhere. It is a registered operator (``torch.ops.pard.small_rows_linear``) with a shape function, so it runs in
eager mode and inside compiled steps (inductor calls it instead of generating its own GEMM).

This is a leaf room: the static decoder (:mod:`pard.decoding.static`) imports it, nothing else does.

* :func:`kernel_isa` builds the operator on first use with PyTorch's extension tooling (a C++ compiler, ~10-30 s,
  reported once) into ``$PARD_CACHE/kernels`` and returns the instruction set it runs (None, with one line saying
  why, where it cannot be built: the library matmul then runs);
* :class:`SmallRowLinear` is ``nn.Linear``'s forward that sends passes of at most ``max_rows`` rows (batch x tokens,
  flattened) to the kernel and wider ones (prefill) to the library GEMM;
* ``MATMULS``: what ``--matmul`` chooses: ``auto`` (the kernel where it runs: float32 weights on a CPU that built
  it), ``kernel`` (required: refused in one line where it cannot run) or ``library`` (``F.linear``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import InvalidArgumentError

MATMULS = ("auto", "kernel", "library")
PANEL = 16  # output rows per packed panel (small_rows.cpp)
ISAS = {"portable": 0, "avx2": 1, "avx512": 2}
ISA_NAMES = {value: name for name, value in ISAS.items()}
# Rows per pass sent to the kernel, per instruction set; wider passes (prefill) go to the library GEMM. Measured
# with docs/small_row_matmul.py (SmolLM2's 120 layer matrices, 2 Zen 4 cores, README): the kernel is 1.7-3.8x
# the library GEMM from 1 to 64 rows on both x86 paths and still 1.3x at 128, so everything up to a batch of 4 x
# 16 tokens goes to it. The portable loop is for CPUs whose fma is an instruction (not measured here: x86 without
# FMA emulates it, 3-13x slower than the library), so --matmul auto never picks it; --matmul kernel can.
MAX_ROWS = {"avx512": 64, "avx2": 64, "portable": 8}
SOURCE = Path(__file__).with_name("small_rows.cpp")


def check_matmul(matmul: str) -> str:
    if matmul not in MATMULS:
        raise InvalidArgumentError(f"unknown --matmul {matmul!r}; choose one of {', '.join(MATMULS)}")
    return matmul


@functools.cache
def kernel_isa() -> str | None:
    """The instruction set the kernel runs here (``avx512``, ``avx2`` or ``portable``; ``$PARD_KERNEL_ISA`` may ask
    for a lesser one, to measure it), building and loading the operator on first use; None where it cannot be
    built (one line on stderr says why)."""
    started = time.perf_counter()
    failure = None
    # -fopenmp: at::parallel_for is an inline OpenMP loop (serial without it); its runtime is the one torch loaded.
    for flags in (["-O3", "-fopenmp"], ["-O3"]):
        try:
            build_dir, fresh = _build(flags)
            break
        except Exception as err:  # no compiler, no ninja, no OpenMP, an unwritable cache: the library still works
            failure = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    else:
        print(f"pard: the small-row matmul kernel could not be built ({failure[:200]}); the library matmul runs "
              "instead", file=sys.stderr)
        return None
    if fresh:
        print(f"pard: built the small-row matmul kernel in {time.perf_counter() - started:.0f} s (once: cached in "
              f"{build_dir})", file=sys.stderr)
    _register_shape_function()
    best = ISA_NAMES[int(torch.ops.pard.cpu_isa())]
    wanted = os.environ.get("PARD_KERNEL_ISA")
    if wanted:
        if wanted not in ISAS or ISAS[wanted] > ISAS[best]:
            runs = ", ".join(name for name, value in ISAS.items() if value <= ISAS[best])
            raise InvalidArgumentError(f"PARD_KERNEL_ISA={wanted}: this CPU runs {runs}")
        return wanted
    return best


def _build(flags: list[str]) -> tuple[Path, bool]:
    """Compile (or find compiled) the operator for this source, torch version and flags, and load it; return its
    build directory and whether it was compiled just now (older builds are then removed)."""
    from torch.utils import cpp_extension

    from ..gguf import cache_root

    key = SOURCE.read_bytes() + torch.__version__.encode() + " ".join(flags).encode()
    name = f"pard_small_rows_{hashlib.sha256(key).hexdigest()[:12]}"
    root = cache_root() / "kernels"
    build_dir = root / name
    fresh = not (build_dir / f"{name}.so").exists()
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name=name, sources=[str(SOURCE)], build_directory=str(build_dir), is_python_module=False,
                       extra_cflags=flags, verbose=False)
    if fresh:
        for old in root.glob("pard_small_rows_*"):
            if old != build_dir:
                shutil.rmtree(old, ignore_errors=True)
    return build_dir, fresh


@functools.cache  # once per process
def _register_shape_function() -> None:
    """What compiled graphs need to place the operator: its output's shape and dtype, without running it."""
    @torch.library.register_fake("pard::small_rows_linear")
    def _(x, packed, bias, out_features, isa):
        return x.new_empty(x.shape[0], out_features)


def kernel_runs(weight: torch.Tensor) -> bool:
    """Whether the kernel can multiply by ``weight``: float32 on a CPU where the operator was built."""
    return weight.dtype == torch.float32 and weight.device.type == "cpu" and kernel_isa() is not None


def kernel_pays(weight: torch.Tensor) -> bool:
    """Whether ``--matmul auto`` takes the kernel: it runs, with vector instructions (AVX-512 or AVX2+FMA)."""
    return kernel_runs(weight) and kernel_isa() != "portable"


def use_kernel(matmul: str, weight: torch.Tensor) -> bool:
    """``--matmul`` resolved for a model whose weights are like ``weight``: ``kernel`` insists (one line where it
    cannot run), ``auto`` takes it where it runs, ``library`` never."""
    check_matmul(matmul)
    if matmul == "library":
        return False
    if kernel_pays(weight) or matmul == "kernel" and kernel_runs(weight):
        return True
    if matmul == "kernel":
        why = ("it was not built here" if kernel_isa() is None
               else f"it multiplies float32 CPU weights, not {weight.dtype} on {weight.device.type}")
        raise InvalidArgumentError(f"--matmul kernel: the small-row kernel cannot run this model ({why}); use "
                                   "--matmul library")
    return False


# One packed copy per group of weights, shared by every decoder over the model (static caches of several batch
# sizes): first weight -> {(ids of the group's weights and biases): (panels, padded bias)}. Tensors compare by
# value, so they are keyed by identity; the group's other tensors belong to the same model as its first weight.
_PACKED = WeakIdKeyDictionary()


def pack_group(weights: list[torch.Tensor], biases: list[torch.Tensor | None]):
    """The packed form (:func:`pack`) of ``weights`` stacked (and their biases, zeros where one has none), made once
    per group."""
    key = tuple(id(t) for t in (*weights, *biases))
    kept = _PACKED.setdefault(weights[0], {})
    if key not in kept:
        with torch.no_grad():
            weight = weights[0] if len(weights) == 1 else torch.cat(weights)  # one-off copy, not kept
            bias = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])
        kept[key] = pack(weight, bias)
    return kept[key]


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W (N, K) -> panels (ceil(N/16), K, 16) with panels[p, k, j] = W[16 p + j, k], zero past N; bias zero-padded
    to 16 ceil(N/16). A copy of the weights (memory: N x K x 4 bytes more per matrix)."""
    with torch.no_grad():
        out_features, in_features = weight.shape
        padded = -(-out_features // PANEL) * PANEL
        rows = torch.zeros(padded, in_features, dtype=torch.float32, device=weight.device)
        rows[:out_features] = weight.detach()
        panels = rows.view(padded // PANEL, PANEL, in_features).transpose(1, 2).contiguous()  # (N/16, K, 16)
        padded_bias = None
        if bias is not None:
            padded_bias = torch.zeros(padded, dtype=torch.float32, device=weight.device)
            padded_bias[:out_features] = bias.detach()
    return panels, padded_bias


def small_rows_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int,
                      isa: str | None = None) -> torch.Tensor:
    """x (M, K) float32 contiguous @ W^T (+ b) -> (M, N) through the kernel (``isa``: the instruction set, default
    the best this CPU has)."""
    isa = isa or kernel_isa()  # builds and loads the operator on first use
    return torch.ops.pard.small_rows_linear(x, packed, bias, out_features, ISAS[isa])


class SmallRowLinear(nn.Module):
    """The forward of ``linears`` -- nn.Linear modules (or heads with a ``weight``) reading the same input -- with
    passes of at most ``max_rows`` rows through the kernel, as ONE matmul over their weights stacked (q/k/v, gate/up:
    one call and one weight stream instead of three or two). forward: x (..., K) -> each linear's output
    (..., N_i), a tuple when there are several.

    Holds the original modules (the library GEMM multiplies wider passes by their own weights, unchanged) and one
    packed copy of the stacked weights. The number of rows, prod(x.shape[:-1]), is static in a compiled graph, so
    the choice between kernel and library is made once per traced shape.
    """

    def __init__(self, *linears: nn.Module, max_rows: int | None = None):
        super().__init__()
        self.linears = nn.ModuleList(linears)
        self.sizes = [m.weight.shape[0] for m in linears]
        self.out_features, self.in_features = sum(self.sizes), linears[0].weight.shape[1]
        self.isa = kernel_isa()
        self.max_rows = MAX_ROWS[self.isa] if max_rows is None else max_rows
        packed, padded_bias = pack_group([m.weight for m in linears], [getattr(m, "bias", None) for m in linears])
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("padded_bias", padded_bias, persistent=False)

    @property
    def packed_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()

    def forward(self, x: torch.Tensor):
        rows = x.numel() // self.in_features
        if rows > self.max_rows or rows == 0:  # the library GEMM: what nn.Linear computes, projection by projection
            out = tuple(F.linear(x, m.weight, getattr(m, "bias", None)) for m in self.linears)
        else:
            flat = x.reshape(rows, self.in_features).contiguous()  # (M, K)
            y = torch.ops.pard.small_rows_linear(flat, self.packed, self.padded_bias, self.out_features,
                                                 ISAS[self.isa])  # (M, sum N_i)
            out = y.view(*x.shape[:-1], self.out_features).split(self.sizes, dim=-1)
        return out if len(out) > 1 else out[0]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.sizes}, isa={self.isa}, max_rows={self.max_rows}"

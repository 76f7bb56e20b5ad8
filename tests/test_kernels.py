"""The small-row matmul kernel (pard.kernels) against F.linear: shapes, row counts, strides, biases, thread counts,
every instruction set this CPU runs; and the properties that keep decoding exact (a row's result never depends on
the other rows, the thread count or the instruction set)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pard.errors import InvalidArgumentError
from pard.kernels import ISAS, MAX_ROWS, SmallRowLinear, kernel_isa, pack, small_rows_linear, use_kernel

pytestmark = pytest.mark.skipif(kernel_isa() is None, reason="the kernel could not be built here (no C++ compiler)")

# (out, in): SmolLM2's k/v, q/o, gate/up and down shapes scaled down, a width that is not a multiple of the panel
# (the tiny models' 259-token vocabulary) and one smaller than a panel.
SHAPES = [(192, 576), (576, 576), (1536, 576), (576, 1536), (259, 64), (8, 3)]
ROWS = [1, 2, 3, 5, 8, 9, 13, 17, 24, 31]


def runnable_isas() -> list[str]:
    return [name for name, value in ISAS.items() if value <= ISAS[kernel_isa()]]


def rounding_bound(x, weight):
    """Both sides compute a length-K dot product in float32, in different orders: each is within K * u * sum|x w|
    of the exact value (u = 2^-24, the unit roundoff; the standard bound for recursive summation, which a blocked
    sum only improves), so they differ by at most twice that."""
    return 2 * x.shape[-1] * 2.0**-24 * (x.abs() @ weight.abs().T) + 1e-30


@pytest.mark.parametrize("out_features, in_features", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_equals_f_linear_within_float_rounding(out_features, in_features, bias):
    gen = torch.Generator().manual_seed(out_features + in_features)
    weight = torch.randn(out_features, in_features, generator=gen)
    b = torch.randn(out_features, generator=gen) if bias else None
    packed, padded_bias = pack(weight, b)
    for rows in ROWS:
        x = torch.randn(rows, in_features, generator=gen)
        reference = F.linear(x, weight, b)
        bound = rounding_bound(x, weight) + (2.0**-24 * b.abs() if bias else 0)
        for isa in runnable_isas():
            got = small_rows_linear(x, packed, padded_bias, out_features, isa)
            assert got.shape == reference.shape
            assert ((got - reference).abs() <= bound).all(), (isa, rows)


def test_a_rows_result_does_not_depend_on_the_other_rows_the_threads_or_the_instruction_set():
    """Each output is one FMA chain over k in order: what a verification pass computes for a token is bit for bit
    what a 1-token pass computes for it."""
    gen = torch.Generator().manual_seed(0)
    weight, x = torch.randn(1536, 576, generator=gen), torch.randn(17, 576, generator=gen)
    packed, _ = pack(weight)
    reference = small_rows_linear(x, packed, None, 1536, "portable")
    for isa in runnable_isas():
        assert torch.equal(small_rows_linear(x, packed, None, 1536, isa), reference), isa
        for rows in (1, 5, 9):
            assert torch.equal(small_rows_linear(x[3 : 3 + rows].contiguous(), packed, None, 1536, isa),
                               reference[3 : 3 + rows])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = small_rows_linear(x, packed, None, 1536)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, reference)


def test_small_row_linear_flattens_batches_and_hands_wide_passes_to_the_library():
    linear = nn.Linear(64, 96)
    module = SmallRowLinear(linear)
    x = torch.randn(3, 4, 64)  # a ragged batch x tokens: 12 rows
    assert torch.allclose(module(x), linear(x), atol=1e-5, rtol=0)
    strided = torch.randn(4, 128)[:, ::2]  # not contiguous
    assert torch.allclose(module(strided), linear(strided), atol=1e-5, rtol=0)
    wide = torch.randn(MAX_ROWS[kernel_isa()] + 1, 64)  # prefill: the library GEMM, exactly F.linear
    assert torch.equal(module(wide), F.linear(wide, linear.weight, linear.bias))
    assert module.packed_bytes == 96 * 64 * 4


def test_the_packed_copy_is_made_once_per_group_of_weights():
    q, k, v = nn.Linear(16, 32), nn.Linear(16, 8, bias=False), nn.Linear(16, 8)
    first, second = SmallRowLinear(q, k, v), SmallRowLinear(q, k, v)  # e.g. static caches of two batch sizes
    assert first.packed is second.packed and first.packed.shape == (3, 16, 16)
    assert torch.equal(first.packed[1, :, 3], q.weight[19]) and torch.equal(first.packed[2, :, 1], k.weight[1])
    x = torch.randn(2, 3, 16)
    for got, linear in zip(first(x), (q, k, v)):  # one matmul over the stacked weights, split per projection
        assert torch.allclose(got, linear(x), atol=1e-5, rtol=0)
    wide = torch.randn(MAX_ROWS[kernel_isa()] + 1, 16)
    assert all(torch.equal(got, linear(wide)) for got, linear in zip(first(wide), (q, k, v)))


def test_the_operator_has_a_shape_function_for_compiled_graphs():
    module = SmallRowLinear(nn.Linear(64, 48, bias=False))
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)  # traces the operator through its fake
    x = torch.randn(5, 64)
    assert torch.equal(compiled(x), module(x))


def test_what_the_kernel_refuses():
    assert not use_kernel("auto", torch.zeros(2, 2, dtype=torch.bfloat16))  # auto: the library GEMM
    with pytest.raises(InvalidArgumentError, match="float32 CPU weights"):
        use_kernel("kernel", torch.zeros(2, 2, dtype=torch.bfloat16))
    assert not use_kernel("library", torch.zeros(2, 2))
    with pytest.raises(InvalidArgumentError, match="unknown --matmul"):
        use_kernel("fast", torch.zeros(2, 2))


def test_without_a_compiler_the_library_matmul_runs_after_one_line(monkeypatch, capsys, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setenv("PARD_CACHE", str(tmp_path))

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    assert kernel_isa.__wrapped__() is None  # the undecorated function: the process keeps its built kernel
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the library matmul runs instead" in err and "command not found" in err

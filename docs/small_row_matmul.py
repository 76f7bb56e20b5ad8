"""Which exact fp32 formulation multiplies 1, 9 or 17 rows by SmolLM2's weights fastest on this CPU?

The weights of 30 SmolLM2-135M layers (q/k/v fused 960x576, o 576x576, gate/up fused 3072x576, down 576x1536;
425 MB, far beyond the L3 cache) are multiplied by an (n, in) activation, layer after layer, as a decode step
does. Prints milliseconds per sweep (median of 5 after 2 warm-ups) for each formulation and n:

    python docs/small_row_matmul.py            # add --no-compile to skip the inductor variants (~2 min)

What the engine uses since the small-row kernel (`pard.kernels`): the kernel on the static and compiled paths
(`--matmul auto`), measured here on each instruction set this CPU runs; with `--matmul library`, F.linear on the
static path and inductor's C++ micro-GEMM (frozen weights, max-autotune: `pard.decoding.static.compile_options`)
on the compiled one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) per layer
LAYERS = 30


class Sweep(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linears = torch.nn.ModuleList(
            torch.nn.Linear(i, o, bias=False) for _ in range(LAYERS) for o, i in SHAPES
        )

    def forward(self, x576, x1536):
        return torch.cat([lin(x576 if lin.in_features == 576 else x1536) for lin in self.linears], dim=1)


def median_ms(fn, repeats: int = 5) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 9, 17])
    args = parser.parse_args()
    torch.manual_seed(0)
    sweep = Sweep().eval()
    weights = [lin.weight.detach() for lin in sweep.linears]
    transposed = [w.t().contiguous() for w in weights]
    print(f"{torch.get_num_threads()} threads; {sum(w.numel() for w in weights) * 4 / 1e6:.0f} MB of fp32 weights")
    for n in args.rows:
        for name, ms in measure(n, sweep, weights, transposed, compile=not args.no_compile).items():
            print(f"n={n:2d}  {ms:7.1f} ms  {name}")


@torch.no_grad()
def measure(n: int, sweep: Sweep, weights, transposed, compile: bool) -> dict[str, float]:
    x = {576: torch.randn(n, 576), 1536: torch.randn(n, 1536)}
    packed = [torch.ops.mkl._mkl_reorder_linear_weight(w, n) for w in weights]
    variants = {
        "F.linear(x, W)": lambda: [F.linear(x[w.shape[1]], w) for w in weights],
        "x @ W_t (stored transposed)": lambda: [x[w.shape[0]] @ w for w in transposed],
        "(W @ x.T).T": lambda: [(w @ x[w.shape[1]].t()).t() for w in weights],
        "MKL packed (_mkl_linear)": lambda: [torch.ops.mkl._mkl_linear(x[w.shape[1]], p, w, None, n)
                                             for w, p in zip(weights, packed)],
    }
    from pard.kernels import ISAS, kernel_isa, pack, small_rows_linear

    if kernel_isa() is not None:
        panels = [pack(w)[0] for w in weights]
        for isa in [name for name, value in ISAS.items() if 0 < value <= ISAS[kernel_isa()]]:
            variants[f"pard kernel ({isa})"] = lambda isa=isa: [
                small_rows_linear(x[w.shape[1]], p, None, w.shape[0], isa) for w, p in zip(weights, panels)]
    timings = {name: median_ms(fn) for name, fn in variants.items()}
    if compile:
        import torch._inductor.config as inductor

        from pard.decoding.static import compile_options

        engine_config = compile_options(torch.device("cpu"), True)["inductor_config"]  # what the engine compiles with
        for name, autotune in [("inductor, frozen weights", False),
                               ("inductor, frozen, max-autotune C++ micro-GEMM", True)]:
            torch._dynamo.reset()
            with inductor.patch({**engine_config, "max_autotune": autotune}):
                compiled = torch.compile(sweep, dynamic=False)
                compiled(x[576], x[1536])
            timings[name] = median_ms(lambda: compiled(x[576], x[1536]))  # noqa: B023 (called before the next)
    return timings


if __name__ == "__main__":
    main()

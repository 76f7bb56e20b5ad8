"""Option helpers shared by every command, and CLI options generated from config dataclasses (TRL-style).

A config field's ``metadata`` carries its help text and, where the default spelling does not fit, ``flags``
(option strings), ``metavar``, ``choices`` or ``exclusive`` (a mutually exclusive group); booleans that default
to True are turned off by their flag (``--no-packing``). One source serves the Python API's docs and the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def add_model_options(parser: argparse.ArgumentParser, *, trust_remote_code: bool = True) -> None:
    """--dtype / --device (/ --trust-remote-code): how every command loads models."""
    parser.add_argument("--dtype", default="auto",
                        help="auto (bf16 on CUDA, fp32 on CPU), checkpoint, float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    if trust_remote_code:
        parser.add_argument("--trust-remote-code", action="store_true",
                            help="allow model code from the hub (off unless asked)")


def add_sampling_options(parser: argparse.ArgumentParser, *, top_k: bool = True) -> None:
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    if top_k:
        parser.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set with this much mass")


def add_cod_options(parser: argparse.ArgumentParser) -> None:
    """-k / --r / --r-min, generated from :class:`~pard.training.cod.CODConfig`."""
    from ..training.config import CODConfig

    add_config_options(parser, CODConfig)


def cod_config(args):
    from ..training.config import CODConfig

    return config_from_args(CODConfig, args)


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace a non-empty {what} (by default it is refused and left as it is)")


def add_config_options(parser, cls, *, skip: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """One option per field of dataclass ``cls`` (recursing into dataclass-valued fields)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            add_config_options(parser, kind, skip=skip)
            continue
        meta = f.metadata
        flags = meta.get("flags", ("--" + f.name.replace("_", "-"),))
        default = _default(f)
        kwargs = {"dest": f.name, "help": meta.get("help", "")}
        if kind is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            base, is_list = _base_type(kind)
            kwargs["type"] = base
            if is_list:
                kwargs["nargs"] = "+"
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            if "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
            if default is not dataclasses.MISSING:
                kwargs["default"] = default
                if default is not None:
                    kwargs["help"] += f" (default {default})"
        if default is dataclasses.MISSING or f.name in required:
            kwargs["required"] = True
        target = parser
        if "exclusive" in meta:
            if meta["exclusive"] not in groups:
                groups[meta["exclusive"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["exclusive"]]
        target.add_argument(*flags, **kwargs)


def config_from_args(cls, args, **overrides):
    """Build dataclass ``cls`` from parsed ``args`` (fields absent from ``args`` keep their defaults)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = config_from_args(hints[f.name], args)
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return cls(**values)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _base_type(kind) -> tuple[type, bool]:
    """``int | None`` -> (int, False); ``list[str]`` -> (str, True)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return _base_type(args[0])
    if typing.get_origin(kind) is list:
        return args[0], True
    return kind, False


def draft_length(text: str) -> int | str:
    """``-k`` values: a positive integer K, or ``auto`` (per-step choice up to --max-k, see pard.decoding.adaptive)."""
    if text == "auto":
        return "auto"
    try:
        return int(text)  # the range is checked where K is used, with the other settings (one clear line)
    except ValueError:
        raise argparse.ArgumentTypeError(f"K must be a positive integer or 'auto', got {text!r}") from None


def add_draft_length_options(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """-k/--num-draft-tokens (or --ks) and --max-k: how many draft tokens each step verifies."""
    if many:
        parser.add_argument("-k", "--ks", nargs="+", type=draft_length, default=[8],
                            help="draft lengths K to measure; 'auto' chooses k per step (up to --max-k)")
    else:
        parser.add_argument("-k", "--num-draft-tokens", type=draft_length, default=8,
                            help="draft tokens per step K (default 8), or 'auto': each step verifies the prefix "
                                 "that maximises expected tokens per second, or none (up to --max-k)")
    parser.add_argument("--max-k", type=int, default=8, help="K_max for -k auto (default 8)")



ENGINE_HELP = ("engine path: auto (compiled steps on CPU when the run is long enough to pay back compiling, else the "
               "static cache with the small-row kernel where it runs, else eager), eager (dynamic cache), static "
               "(static cache), compiled (static cache + torch.compile)")


MATMUL_HELP = ("matmuls of the static and compiled paths: auto (the small-row kernel where it runs: float32 on a CPU "
               "that built it), kernel (required), library (the library GEMM)")


def add_engine_option(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """--engine and --matmul (or --engines / --matmuls for benchmarks): which LM implementation runs the models
    and what multiplies in it (pard.decoding.engines and pard.kernels check the names when the command runs:
    building the parser must not import torch)."""
    if many:
        parser.add_argument("--engines", nargs="+", default=["auto"], metavar="ENGINE",
                            help=ENGINE_HELP + "; several are measured side by side")
        parser.add_argument("--matmuls", nargs="+", default=["auto"], metavar="MATMUL",
                            help=MATMUL_HELP + "; several are measured side by side")
    else:
        parser.add_argument("--engine", default="auto", help=ENGINE_HELP)
        parser.add_argument("--matmul", default="auto", help=MATMUL_HELP)

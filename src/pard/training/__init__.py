"""PARD training: COD samples (Algorithm 1), the collator, data loading, the run directory and the Trainer wiring.

Names are imported on first use (PEP 562): reading a run directory (:mod:`.rundir`) or building COD samples does
not pull in the Trainer or ``datasets``.
"""

from importlib import import_module

_LAZY = {
    "CODConfig": ".config",
    "PackedSample": ".cod",
    "build_cod_sample": ".cod",
    "CODCollator": ".collator",
    "DataConfig": ".config",
    "TrainConfig": ".config",
    "train": ".trainer",
    "train_or_resume": ".trainer",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)

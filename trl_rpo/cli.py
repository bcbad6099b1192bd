"""The `trl-rpo` command line: `trl-rpo <command> [options]`.

Commands are registered in `COMMANDS` (name -> `Command`); each one parses its own arguments, so a new command
is one entry:

    trl-rpo build-dataset --config rpo.yaml [--images_per_prompt 4 ...]   # RPO pairs (RichPreferenceDataBuilder)
    trl-rpo dpo --config dpo.yaml [...]                                    # DiffusionDPOTrainer
    trl-rpo tailorpo --config tailorpo.yaml [...]                          # TailorPOTrainer
    trl-rpo eval --model trained/ --base base/ --prompts prompts.txt ...  # did training help? (paired gain, CI)
    trl-rpo grpo --config grpo.yaml [...]                                  # DiffusionGRPOTrainer
    trl-rpo nft --config nft.yaml [...]                                    # DiffusionNFTTrainer
    trl-rpo serve-reward --reward aesthetic --port 8000                    # a reward served over HTTP
    trl-rpo demo [--quick]                                                 # the shapes-world demo
    trl-rpo study [--quick] [--output_dir DIR]                             # the demo over 5 training seeds

Options come from a YAML file and the command line, as in TRL scripts: the command line overrides the file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "BuildDatasetArguments", "Command", "build_dataset", "load_prompts", "main", "resolve_stage"]

logger = logging.getLogger(__name__)

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


# Built-in backends, constructed with the `*_kwargs` arguments.
CRITIC_ALIASES = {
    "openai": "trl_rpo.data.critics:OpenAICompatibleCritic",
    "transformers": "trl_rpo.data.critics:TransformersCritic",
}
EDITOR_ALIASES = {
    "instruct_pix2pix": "trl_rpo.data.editors:InstructPix2PixEditor",
    "inpaint": "trl_rpo.data.editors:InpaintEditor",
    "controlnet": "trl_rpo.data.editors:ControlNetEditor",
    "img2img": "trl_rpo.data.editors:Img2ImgEditor",
    "flux_kontext": "trl_rpo.data.instruction_editors:FluxKontextEditor",
    "qwen_image_edit": "trl_rpo.data.instruction_editors:QwenImageEditEditor",
}


@dataclass
class BuildDatasetArguments:
    """What `trl-rpo build-dataset` builds from: prompts and the stages (the builder's settings are separate).

    A stage is named by a built-in alias (`shapes`: the shapes world's generator, critic, editor or reward) or an
    import path `package.module:attribute`; a class there is instantiated without arguments, anything else (a
    function, a configured instance) is used as is. The generator may also be a Hub id or a local pipeline folder.
    """

    prompts: str = field(
        metadata={
            "help": "Prompts: a .txt file (one per line), a dataset (Hub id or save_to_disk folder), or "
            "'shapes:N' for N shapes-world prompts."
        }
    )
    generator: str = field(
        metadata={"help": "Hub id or local folder of a diffusers pipeline, 'shapes', or 'module:attribute'."}
    )
    critic: str = field(
        default="shapes",
        metadata={"help": f"A critic: 'shapes', {sorted(CRITIC_ALIASES)} (with critic_kwargs) or 'module:attribute'."},
    )
    critic_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "Constructor arguments of the critic's class: a JSON object on the command line, a mapping in "
            'YAML, e.g. \'{"base_url": "http://localhost:8000/v1", "model": "Qwen/Qwen2.5-VL-7B-Instruct"}\'.'
        },
    )
    editor: list[str] = field(
        default_factory=lambda: ["shapes"],
        metadata={
            "help": f"One or more editors, tried in order: 'shapes', {sorted(EDITOR_ALIASES)} or 'module:attribute'."
        },
    )
    editor_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "Constructor arguments of the editors' classes: a JSON list with one object per editor (or one "
            'object for a single editor), e.g. \'[{"pipeline": "timbrooks/instruct-pix2pix"}]\'.'
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts of a dataset."})
    prompt_split: str = field(default="train", metadata={"help": "Split of a prompt dataset."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={"help": "Reward functions of a reward-margin verifier ('shapes' or 'module:attribute')."},
    )
    reward_margin: float = field(
        default=0.0, metadata={"help": "The edit's reward must exceed the original's by more than this."}
    )
    critic_recheck: bool = field(
        default=False, metadata={"help": "Re-run the critic on each edit; keep it when it asks for fewer edits."}
    )
    critic_recheck_require_none: bool = field(
        default=False, metadata={"help": "With critic_recheck: keep only edits the critic finds nothing to fix in."}
    )
    change_guard: bool = field(
        default=False, metadata={"help": "Keep only edits whose pixel distance lies in [min_change, max_change]."}
    )
    min_change: float = field(default=0.001, metadata={"help": "Change guard: smallest pixel distance accepted."})
    max_change: float = field(default=0.5, metadata={"help": "Change guard: largest pixel distance accepted."})
    change_metric: str = field(
        default="mean_abs", metadata={"help": "Change guard metric: 'mean_abs' or 'changed_fraction'."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset and its card to the Hub."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub repository, e.g. me/rpo-pairs."})
    hub_private: bool | None = field(default=None, metadata={"help": "Make a new Hub repository private."})

    def __post_init__(self):
        self.critic_kwargs = _parse_kwargs(self.critic_kwargs, "critic_kwargs")
        editor_kwargs = _parse_kwargs(self.editor_kwargs, "editor_kwargs", allow_list=True)
        if isinstance(editor_kwargs, dict):
            editor_kwargs = [editor_kwargs] if editor_kwargs else []
        if editor_kwargs and len(editor_kwargs) != len(self.editor):
            raise ValueError(f"editor_kwargs has {len(editor_kwargs)} entries for {len(self.editor)} editors")
        self.editor_kwargs = editor_kwargs or [{} for _ in self.editor]
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("--push_to_hub needs --hub_dataset_id (e.g. me/rpo-pairs)")


def _parse_kwargs(value: Any, name: str, allow_list: bool = False) -> Any:
    """A mapping (or, with `allow_list`, a list of mappings) from YAML or from a JSON string."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} is not valid JSON: {err}") from err
    if isinstance(value, dict) or (allow_list and isinstance(value, list) and all(isinstance(v, dict) for v in value)):
        return value
    expected = "an object or a list of objects" if allow_list else "an object"
    raise ValueError(f"{name} must be {expected} of keyword arguments, got {type(value).__name__}")


def _shapes_stage(role: str) -> Any:
    from . import shapes
    return {
        "generator": shapes.ShapesGenerator,
        "critic": shapes.Critic,
        "editor": shapes.Editor,
        "reward": lambda: shapes.alignment_score,
    }[role]()


def resolve_stage(spec: str, role: str, kwargs: dict[str, Any] | None = None) -> Any:
    """The stage object named by `spec`: the alias `shapes`, a built-in backend alias, or `module:attribute`.

    A class is instantiated with `kwargs`; anything else (a function, a configured instance) is used as is.

    Raises:
        ValueError: naming the role and the spec when it is none of these, or the import fails.
    """
    kwargs = kwargs or {}
    aliases = {"critic": CRITIC_ALIASES, "editor": EDITOR_ALIASES}.get(role, {})
    spec = aliases.get(spec, spec)
    if spec == "shapes":
        if kwargs:
            raise ValueError(f"the shapes {role} takes no arguments, got {sorted(kwargs)}")
        return _shapes_stage(role)
    if not _IMPORT_PATH.match(spec):
        raise ValueError(
            f"{role} {spec!r}: expected 'shapes', one of {sorted(aliases)} or an import path "
            "'package.module:attribute'"
        )
    module_name, attribute = spec.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{role} {spec!r} cannot be imported: {err}") from err
    if isinstance(obj, type):
        try:
            return obj(**kwargs)
        except TypeError as err:
            raise ValueError(f"{role} {spec!r} could not be built with {sorted(kwargs)}: {err}") from err
    if kwargs:
        raise ValueError(f"{role} {spec!r} is not a class, so it takes no arguments (got {sorted(kwargs)})")
    return obj


def resolve_generator(spec: str) -> Any:
    """`shapes`, an import path, or else a Hub id / local folder left for the builder to load."""
    if spec == "shapes" or _IMPORT_PATH.match(spec):
        return resolve_stage(spec, "generator")
    return spec


def load_prompts(spec: str, column: str = "prompt", split: str = "train", limit: int | None = None) -> list[str]:
    """Prompts from a .txt file, a dataset, or `shapes:N` (N shapes-world training prompts)."""
    if spec.startswith("shapes:"):
        from .shapes import prompts as shapes_prompts

        count = spec.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"prompts {spec!r}: expected 'shapes:N' with N a positive integer")
        prompts = shapes_prompts(int(count))
    else:
        from .data.formats import load_prompt_dataset

        prompts = load_prompt_dataset(spec, split=split, prompt_column=column)["prompt"]
    return list(prompts[:limit] if limit is not None else prompts)


def build_verifiers(args: BuildDatasetArguments, critic: Any) -> list[Callable]:
    """The verifiers the arguments ask for, in the order reward margin, critic re-check, change guard."""
    from .data.verifiers import ChangeGuard, CriticRecheckVerifier, RewardMarginVerifier

    verifiers: list[Callable] = []
    if args.reward_funcs:
        funcs = [resolve_stage(spec, "reward") for spec in args.reward_funcs]
        verifiers.append(RewardMarginVerifier(funcs, margin=args.reward_margin))
    if args.critic_recheck:
        verifiers.append(CriticRecheckVerifier(critic, require_none=args.critic_recheck_require_none))
    if args.change_guard:
        verifiers.append(ChangeGuard(args.min_change, args.max_change, metric=args.change_metric))
    return verifiers


def build_dataset(args: BuildDatasetArguments, config: Any):
    """Build (or resume) the dataset the arguments describe; push it when asked. Returns the builder."""
    from .data.builder import RichPreferenceDataBuilder

    critic = resolve_stage(args.critic, "critic", args.critic_kwargs)
    builder = RichPreferenceDataBuilder(
        generator=resolve_generator(args.generator),
        critic=critic,
        editor=[resolve_stage(spec, "editor", kw) for spec, kw in zip(args.editor, args.editor_kwargs)],
        verifier=build_verifiers(args, critic),
        args=config,
    )
    builder.build(load_prompts(args.prompts, args.prompt_column, args.prompt_split, args.max_prompts))
    from .data.builder import _process_state

    if args.push_to_hub and _process_state().is_main_process:
        url = builder.push_to_hub(args.hub_dataset_id, private=args.hub_private)
        logger.info("Pushed to %s", url)
    return builder


def _run_build_dataset(argv: Sequence[str]) -> int:
    from trl import TrlParser

    from .data.builder import RichPreferenceConfig

    parser = TrlParser(
        (BuildDatasetArguments, RichPreferenceConfig),
        prog="trl-rpo build-dataset",
        description="Build RPO preference pairs: generate, critique, edit, verify (resumable; see "
        "docs/rich_preference_builder.md). Options may come from --config FILE.yaml; the command line overrides it.",
    )
    script_args, config = parser.parse_args_and_config(args=list(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    builder = build_dataset(script_args, config)
    counts = builder.stats
    print(
        f"{counts['kept']} pair(s) in {config.output_dir} ({counts['no_edit']} already good, "
        f"{counts['edit_failed']} failed edits, {counts['rejected']} rejected by verifiers)"
    )
    return 0


# The option type of a config field (by its annotation) in `trl-rpo demo` / `trl-rpo study`: every override is
# optional (None = the preset's value), and tuples become lists for the argument parser.
OPTION_KINDS: dict[str, Any] = {
    "int": int | None, "float": float | None, "bool": bool | None, "str": str | None, "str | None": str | None,
    "float | None": float | None, "bool | None": bool | None, "tuple[int, ...]": list[int] | None,
    "tuple[str, ...]": list[str] | None,
}  # fmt: skip


def demo_arguments_class() -> type:
    """`trl-rpo demo`'s options: `--quick`, `--output_dir`, and every `DemoConfig` field as an override.

    Overrides default to None ("the preset's value"), so `--quick --dpo_steps 50` changes only the DPO steps of
    the quick preset; each help text gives both presets' values.
    """
    from dataclasses import field, fields, make_dataclass

    from .shapes.demo import DemoConfig

    full, quick = DemoConfig(), DemoConfig.quick()
    specs: list[tuple[str, Any, Any]] = [
        ("quick", bool, field(default=False, metadata={"help": "Small budgets: a smoke test in about 3 minutes."})),
        ("output_dir", str | None, field(default=None, metadata={
            "help": "New folder for results.json, grid.png, curves.png and the runs (never overwritten); "
            "default: outputs/demo/run-<time>."})),
    ]  # fmt: skip
    for f in fields(DemoConfig):
        default, quick_default = getattr(full, f.name), getattr(quick, f.name)
        preset = f"preset: {default!r}" + ("" if quick_default == default else f"; {quick_default!r} with --quick")
        help_text = f"{f.metadata['help']} ({preset})"
        specs.append((f.name, OPTION_KINDS[f.type], field(default=None, metadata={"help": help_text})))
    return make_dataclass("DemoArguments", specs)


def _run_demo(argv: Sequence[str]) -> int:
    from dataclasses import asdict, fields

    from trl import TrlParser

    from .shapes.demo import DemoConfig, run_demo

    parser = TrlParser(
        (demo_arguments_class(),),
        prog="trl-rpo demo",
        description="The shapes-world demo: base model, DPO on reward-labelled vs RPO pairs, TailorPO and its "
        "final-image baseline, all evaluated on held-out prompts (see docs/shapes.md). Options may come from "
        "--config FILE.yaml; the command line overrides it.",
    )
    (args,) = parser.parse_args_and_config(args=list(argv))
    values = {k: v for k, v in asdict(args).items() if k not in ("quick", "output_dir") and v is not None}
    unknown = sorted(set(values) - {f.name for f in fields(DemoConfig)})
    if unknown:  # the parser is built from DemoConfig's fields, so this is a bug, not a user error
        raise RuntimeError(f"demo options without a DemoConfig field: {unknown}")
    try:
        config = DemoConfig.quick(**values) if args.quick else DemoConfig(**values)
    except ValueError as err:
        parser.error(str(err))
    import time

    output_dir = args.output_dir or f"outputs/demo/run-{time.strftime('%Y%m%d-%H%M%S')}"
    if Path(output_dir).exists() and any(Path(output_dir).iterdir()):
        parser.error(f"--output_dir {output_dir} exists and is not empty; the demo never overwrites a run")
    start = time.perf_counter()
    run_demo(config, output_dir)
    print(f"results.json, grid.png, curves.png and gains.png in {output_dir} ({time.perf_counter() - start:.0f} s)")
    return 0


def _run_study(argv: Sequence[str]) -> int:
    from .shapes.study import main as study_main

    return study_main(argv)


# Arguments that name a Hub repository or a local folder, and the folder each expects.
_FOLDER_ARGUMENTS = {
    "model_name_or_path": "a Hub model id (org/name) or a folder written by `pipeline.save_pretrained`",
    "vae_model_name_or_path": "a Hub model id (org/name) or a folder written by `vae.save_pretrained`",
    "dataset_name": "a Hub dataset id (org/name) or a folder written by `Dataset.save_to_disk`",
    "prompts_name_or_path": "a Hub dataset id (org/name), a `Dataset.save_to_disk` folder or a .txt file",
    "model": "a LoRA or UNet folder saved by a trainer, or a folder written by `pipeline.save_pretrained`",
    "base": "a Hub model id (org/name), a folder written by `pipeline.save_pretrained`, or 'shapes'",
    "prompts": "a .txt file (one prompt per line), a Hub dataset id, a `Dataset.save_to_disk` folder or 'shapes:N'",
}


def looks_local(value: str) -> bool:
    """Whether `value` is meant as a local path rather than a Hub id (`name` or `org/name`).

    Absolute paths, `./` `../` `~` prefixes, more than one `/`, and file suffixes cannot be Hub ids.
    """
    return (
        Path(value).expanduser().is_absolute()
        or value.startswith((".", "~"))
        or value.count("/") > 1
        or "\\" in value
        or Path(value).suffix.lower() in (".txt", ".json", ".jsonl", ".csv", ".parquet")
    )


def missing_path_error(args: Sequence[Any]) -> str | None:
    """One line naming the first folder argument that points at nothing on disk, or None when all are fine.

    A value that exists locally, or could be a Hub id, passes; loading reports what is wrong with it later.
    """
    for group in args:
        for name, expected in _FOLDER_ARGUMENTS.items():
            value = getattr(group, name, None)
            if isinstance(value, str) and value and looks_local(value) and not Path(value).expanduser().exists():
                return f"--{name} {value}: no such file or folder; expected {expected}"
    return None


def _trainer_command(module_name: str, prog: str) -> Callable[[Sequence[str]], int]:
    """Run `trl_rpo.scripts.<module_name>`; invalid values are reported as a usage error before any model loads."""

    def run(argv: Sequence[str]) -> int:
        module = importlib.import_module(f"trl_rpo.scripts.{module_name}")
        parser = module.make_parser(prog=prog)
        try:
            args = parser.parse_args_and_config(args=list(argv))
        except (ValueError, TypeError) as err:  # config __post_init__ checks, YAML of the wrong type
            parser.error(str(err))
        error = missing_path_error(args)
        if error is not None:
            parser.exit(2, f"{prog}: error: {error}\n")
        module.main(*args)
        return 0

    return run


def _run_serve_reward(argv: Sequence[str]) -> int:
    """`trl-rpo serve-reward`: serve one of `trl-rpo tailorpo`'s rewards over HTTP (see trl_rpo/rewards/remote.py)."""
    from dataclasses import replace

    from trl import TrlParser

    from .rewards.remote import serve_reward
    from .scripts.tailorpo import REWARDS, ScriptArguments, build_rewards

    @dataclass
    class ServeArguments:
        reward: str = field(default="aesthetic", metadata={"help": f"The reward to serve, among {list(REWARDS)}."})
        host: str = field(default="127.0.0.1", metadata={"help": "Interface to listen on (0.0.0.0: all)."})
        port: int = field(default=8000, metadata={"help": "Port to listen on."})
        max_batch_size: int = field(default=256, metadata={"help": "Most images accepted in one request."})

    parser = TrlParser(
        (ServeArguments, ScriptArguments),
        prog="trl-rpo serve-reward",
        description="Serve a reward over HTTP (POST /score, GET /health) for `RemoteReward` clients, e.g. "
        "`--reward_funcs http://HOST:PORT` in `trl-rpo grpo`. The scorer's own options (--aesthetic_clip_model, "
        "--clip_model, ...) are those of `trl-rpo tailorpo`.",
    )
    try:
        serve_args, script_args = parser.parse_args_and_config(
            args=[*argv, *([] if "--prompts_name_or_path" in argv else ["--prompts_name_or_path", "-"])]
        )
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    if serve_args.reward not in REWARDS:
        parser.error(f"--reward {serve_args.reward!r}: choose among {list(REWARDS)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (scorer,) = build_rewards(replace(script_args, reward_funcs=[serve_args.reward]))
    serve_reward(scorer, serve_args.host, serve_args.port, serve_args.max_batch_size)
    return 0


@dataclass(frozen=True)
class Command:
    """A subcommand: one line of help and a function of the remaining arguments that returns an exit code."""

    help: str
    run: Callable[[Sequence[str]], int]


# The model families every trainer takes (the registry, `trl_rpo.families`).
FAMS = "SD 1.5, SDXL, SD3, FLUX.1, Qwen-Image, Z-Image, FLUX.2 [klein]"

COMMANDS: dict[str, Command] = {
    "build-dataset": Command(
        help="Build RPO preference pairs (critique -> instructions -> edit -> verify).", run=_run_build_dataset
    ),
    "dpo": Command(
        help=f"Diffusion-DPO / Flow-DPO ({FAMS}; LoRA or full) on a preference dataset.",
        run=_trainer_command("dpo", "trl-rpo dpo"),
    ),
    "tailorpo": Command(
        help=f"TailorPO: online step-wise preference optimization with reward models ({FAMS}).",
        run=_trainer_command("tailorpo", "trl-rpo tailorpo"),
    ),
    "eval": Command(
        help="Did training help? A trained model (LoRA, UNet / transformer or pipeline folder) against its base: "
        "paired gain with CI, win rate, grid, JSON report.",
        run=_trainer_command("evaluate", "trl-rpo eval"),
    ),
    "grpo": Command(
        help="GRPO: online RL with group-normalised rewards (same reward names as tailorpo, or reward-server URLs).",
        run=_trainer_command("grpo", "trl-rpo grpo"),
    ),
    "nft": Command(
        help="DiffusionNFT: online RL on the forward process, any solver, no likelihoods (GRPO's reward names).",
        run=_trainer_command("nft", "trl-rpo nft"),
    ),
    "serve-reward": Command(
        help="Serve a reward over HTTP in its own process, for RemoteReward / --reward_funcs http://HOST:PORT.",
        run=_run_serve_reward,
    ),
    "demo": Command(
        help="Run every method on the shapes world's base model and compare them (offline, CPU, minutes).",
        run=_run_demo,
    ),
    "study": Command(
        help="The demo's methods over several training seeds: declared comparisons, two-level bootstrap, Holm "
        "(resumable; hours on a CPU).",
        run=_run_study,
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-rpo",
        description="trl-rpo: preference optimization for text-to-image diffusion models.",
        epilog="Run `trl-rpo COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trl-rpo` console script; returns the exit code."""
    # On CPUs with AVX512-BF16, importing peft (through TrainingArguments) makes bitsandbytes warn that an optional
    # 4-bit CPU kernel from the Hub is missing. No trl-rpo command runs 4-bit matmuls on a CPU, so the notice is noise
    # on every command, `--help` included.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    return COMMANDS[name].run(rest)


if __name__ == "__main__":
    sys.exit(main())

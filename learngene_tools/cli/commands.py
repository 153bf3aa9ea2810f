"""What each command takes: its settings classes, plus its own inputs (files in and out, switches).

The command line (`learngene_tools.cli`) builds every command's arguments and options from these
classes, and recipes (`learngene_tools.cli.recipes`) accept exactly the settings of their command that
are marked recipe-settable. A command's own inputs are declared here in the same way as settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from learngene_tools.distillation.config import DistillSettings, RunOptions
from learngene_tools.evaluation.config import EvaluationSettings
from learngene_tools.extraction.config import SelectionSettings
from learngene_tools.settings import setting
from learngene_tools.transplantation.config import TransplantSettings

REF_HELP = "a path, lgt:NAME (a shipped bundle: `lgt list` shows them) or hf://OWNER/REPO/FILE[@REVISION]"
FILE_HELP = "a path or hf://OWNER/REPO/FILE[@REVISION]"  # a checkpoint: never a shipped bundle


@dataclass(frozen=True)
class SelectCommand:
    """`lgt select`: the auxiliary model in, the bundle out."""

    aux: str = setting(help=f"Trained auxiliary model (.safetensors/.pt; `lgt distill` writes WORK_DIR/aux.safetensors): "
                            f"{FILE_HELP}.", positional=True, recipe=False)
    output: Path = setting(Path("learngene.safetensors"), "Bundle to write.", short="-o")
    force: bool = setting(False, "Overwrite an existing output.", recipe=False)
    trust_pickle: bool = setting(False, "Allow arbitrary pickled objects (trusted files only).", recipe=False)


@dataclass(frozen=True)
class TransplantCommand:
    """`lgt transplant`: bundle and target in, the descendant checkpoint out."""

    bundle: str = setting(help=f"Learngene bundle: {REF_HELP}.", positional=True, recipe=False)
    target: str | None = setting(None, f"The checkpoint to initialise ({FILE_HELP}; a file or a save_pretrained "
                                       "folder), or a model spec built with random weights: timm:NAME, "
                                       "torchvision:NAME, pkg.module:factory, with literal arguments such as "
                                       "timm:resnet18(num_classes=10).", positional=True)
    output: Path | None = setting(None, "Descendant checkpoint (default: <target>_lg.<ext> here).", short="-o")
    dry_run: bool = setting(False, "Show the plan and write nothing.", recipe=False)
    force: bool = setting(False, "Overwrite an existing output.", recipe=False)
    trust_code: bool = setting(False, "Let a recipe's pkg.module:factory model spec be imported and run "
                                      "(trusted recipes only).", recipe=False)


@dataclass(frozen=True)
class DistillCommand:
    """`lgt distill`: switches of the command itself."""

    synthetic: bool = setting(False, "Distil on procedural images (what happens anyway without --data).")
    dry_run: bool = setting(False, "Show what would run (ancestry, taps, auxiliary model, steps, data) and train "
                                   "nothing.", recipe=False)
    trust_code: bool = setting(False, "Let a recipe's pkg.module:factory model spec be imported and run "
                                      "(trusted recipes only).", recipe=False)


@dataclass(frozen=True)
class ExtractCommand(DistillCommand):
    """`lgt extract`: the bundle out, besides what `lgt distill` takes."""

    output: Path = setting(Path("learngene.safetensors"), "Bundle to write.", short="-o")


@dataclass(frozen=True)
class InspectCommand:
    """`lgt inspect`: one file or model spec."""

    file: str = setting(help=f"A bundle or checkpoint ({REF_HELP}), or a model spec (timm:NAME, "
                             "torchvision:NAME(num_classes=10)).", positional=True)
    arch: str | None = setting(None, "Model of a checkpoint (timm:NAME, torchvision:NAME or pkg.module:factory), "
                                     "for exact strides.", metavar="SPEC")
    verify: bool | None = setting(None, "Re-hash a bundle's tensor bytes (default: yes for a local file; a Hub "
                                        "bundle is read from its header alone, --verify downloads it).")
    trust_pickle: bool = setting(False, "Allow arbitrary pickled objects (trusted files only).")


@dataclass(frozen=True)
class PullCommand:
    """`lgt pull`: a bundle from the Hub into the HF cache."""

    repo: str = setting(help="OWNER/REPO on the Hub (or hf://OWNER/REPO/FILE[@REVISION]).", positional=True)
    revision: str | None = setting(None, "Branch, tag or commit (default: main).")
    filename: str | None = setting(None, "Bundle file in the repo (default: learngene.safetensors).")


@dataclass(frozen=True)
class PushCommand:
    """`lgt push`: a bundle and its model card to a Hub model repo."""

    bundle: str = setting(help=f"Learngene bundle to upload: {REF_HELP}.", positional=True)
    repo: str = setting(help="OWNER/REPO on the Hub; created if it does not exist.", positional=True)
    private: bool = setting(False, "Create the repo as private.")
    revision: str | None = setting(None, "Branch to push to (created from main if needed).")
    create_pr: bool = setting(False, "Open a pull request instead of committing to the branch.")
    filename: str | None = setting(None, "Name in the repo (default: the bundle's file name).")
    license: str | None = setting(None, "License id for the model card, e.g. mit or apache-2.0.")
    overwrite_card: bool = setting(False, "Replace an existing README.md with a generated card.")
    message: str | None = setting(None, "Commit message.", short="-m")


@dataclass(frozen=True)
class ListCommand:
    """`lgt list`: the bundles at hand (shipped, and pulled into the Hugging Face cache); no options of its own."""


@dataclass(frozen=True)
class DemoCommand:
    """`lgt demo`: the whole pipeline on built-in models."""

    out_dir: Path = setting(Path("lgt-demo"), "Folder for the demo's files.")
    target: str = setting("timm:resnet50", "Model spec to transplant into.", metavar="SPEC")
    force: bool = setting(False, "Overwrite files from an earlier demo.")


@dataclass(frozen=True)
class EvaluateCommand:
    """`lgt evaluate`: the bundle in; the record, the tables and the figure out."""

    bundle: str = setting(help=f"Learngene bundle: {REF_HELP}.", positional=True, recipe=False)
    output_dir: Path = setting(Path("lgt-evaluate"), "Folder for NAME.json (every run), NAME.md (the tables) and "
                                                     "NAME.png (accuracy per epoch); created if missing.", short="-o")
    name: str = setting("evaluation", "File name (stem) of the outputs.")
    teacher: str | None = setting(None, f"Ancestry checkpoint ({FILE_HELP}): adds a KD row, the descendant trained "
                                        "from scratch with feature distillation from it.", metavar="FILE")
    resume: bool = setting(False, "Keep the runs an earlier evaluation with the same settings left in NAME.json.",
                           recipe=False)
    force: bool = setting(False, "Overwrite existing outputs.", recipe=False)
    trust_pickle: bool = setting(False, "Allow arbitrary pickled objects in the teacher (trusted files only).",
                                 recipe=False)


# settings classes of each command, in the order their options are listed
COMMANDS: dict[str, tuple[type, ...]] = {
    "select": (SelectCommand, SelectionSettings),
    "transplant": (TransplantCommand, TransplantSettings),
    "inspect": (InspectCommand,),
    "pull": (PullCommand,),
    "push": (PushCommand,),
    "demo": (DemoCommand,),
    "list": (ListCommand,),
    "distill": (RunOptions, DistillCommand, DistillSettings),
    "extract": (RunOptions, ExtractCommand, DistillSettings, SelectionSettings),
    "evaluate": (EvaluateCommand, EvaluationSettings),
}
# the table a recipe has for each kind, and the command whose settings it may set
RECIPE_KINDS: dict[str, str] = {"extract": "extract", "transplant": "transplant", "evaluate": "evaluate"}

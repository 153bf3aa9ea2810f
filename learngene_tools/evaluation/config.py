"""What an evaluation computes: the descendant, the data, the schedule, and the initialisations compared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learngene_tools.errors import SettingsError
from learngene_tools.settings import coerce_fields, setting, to_json
from learngene_tools.transplantation.config import CONTROLS

BN_MODES = ("transfer", "target", "reestimate")
ARM_KINDS = ("scratch", "clkg", "random-matched", "shuffled")  # the initialisations --arms can compare
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything that decides an evaluation's numbers (output paths and progress display do not)."""

    arch: str | None = setting(None, "Descendant model: timm:NAME, torchvision:NAME or pkg.module:factory, built "
                                     "with random init for the data's classes and channels.", metavar="SPEC")
    data: str | None = setting(None, "An image folder (class subfolders; train/ + val/ [+ test/] for a given "
                                     "split), an idx folder (MNIST/Fashion-MNIST files), or `synthetic`.",
                               metavar="DIR")
    img_size: int | None = setting(None, "Training image size (default: idx images padded to a multiple of 16, "
                                         "image folders 224, synthetic 32).")
    val_fraction: float = setting(0.1, "Share of the training images carved off for validation when the data has "
                                       "no val/ split.")
    split_seed: int = setting(0, "Seed of the validation carve.")
    train_limit: int | None = setting(None, "Use only the first N training images (after the carve) as 100 %.")
    val_limit: int | None = setting(None, "Validate on only the first N validation images (after every epoch).")
    test: bool = setting(True, "Measure the final models on the data's test split (idx t10k files, a test/ folder).")
    test_limit: int | None = setting(None, "Measure on only the first N test images.")
    seeds: int = setting(3, "Seeds per cell (0..N-1): each seed fixes the init, the data order and augmentation, "
                            "shared by every initialisation.")
    fractions: tuple[float, ...] = setting((1.0, 0.1), "Shares of the training images to fine-tune on.")
    arms: tuple[str, ...] = setting(("scratch", "clkg", "random-matched"),
                                    "Initialisations compared: scratch, clkg (the learngene), random-matched and "
                                    "shuffled (controls: the same plan with each transplanted filter's values "
                                    "replaced by random ones of its norm, or permuted); clkg − random-matched is "
                                    "what the learngene's knowledge adds beyond its scale.", metavar="ARM[,ARM]")
    epochs: int = setting(10, "Epochs (passes over each fraction's images; with --steps, the number of equal "
                              "parts of the step budget, each followed by validation).")
    steps: int | None = setting(None, "Optimiser steps per run, the same for every fraction (small fractions repeat "
                                      "their images to reach it), so data and steps are not confounded.")
    min_steps: int = setting(0, "At least this many optimiser steps per run: an epoch of a small fraction then "
                                "passes over its images several times (0: one pass per epoch).")
    batch_size: int = setting(128, "Batch size.")
    lr: float = setting(0.05, "Peak SGD learning rate (momentum 0.9, Nesterov, cosine decay per step).")
    lr_grid: tuple[float, ...] | None = setting(None, "Learning rates to try for every arm: each arm keeps, per "
                                                      "fraction, the rate with the best mean final validation "
                                                      "accuracy, and only that rate is measured on test "
                                                      "(overrides --lr).", metavar="LR[,LR]")
    weight_decay: float = setting(5e-4, "SGD weight decay.")
    augment: bool = setting(True, "Random translation (size/8 px) and horizontal flip.")
    bn: tuple[str, ...] = setting(("transfer",), "BatchNorm of transplanted convs: transfer (the learngene's), target "
                                                 "(the descendant's own) or reestimate (the learngene's affine, running "
                                                 "statistics measured on --bn-batches of the training data); several, "
                                                 "comma-separated, give one CLKG row each.", metavar="MODE[,MODE]")
    bn_batches: int = setting(8, "Training batches that re-estimate BatchNorm statistics (--bn reestimate).")
    rescale: bool = setting(False, "Rescale each transplanted kernel to the standard deviation of the conv's own "
                                   "initial weight (BN statistics scaled to match).")
    stages: tuple[int, ...] | None = setting(None, "Transplant only these learngene stages (default: all the bundle "
                                                   "has).", metavar="S[,S]")
    kd_weight: float = setting(1.0, "Weight of the feature-distillation loss of the --teacher baseline.")
    teacher_arch: str | None = setting(None, "Teacher model for the KD baseline (default: the bundle's ancestry).",
                                       metavar="SPEC")
    device: str | None = setting(None, "cpu or cuda (default: cuda when available).", recipe=False)
    precision: str = setting("auto", "auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32.", choices=PRECISIONS)
    jobs: int = setting(1, "Runs in parallel (processes; on one GPU when the models are small).", recipe=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.steps is not None and self.steps < self.epochs:
            raise SettingsError(f"--steps must be at least --epochs ({self.epochs}; got {self.steps})")
        if self.steps is not None and self.min_steps:
            raise SettingsError("give --steps (a fixed budget) or --min-steps (a floor), not both")
        if self.lr_grid is not None and (not self.lr_grid or any(not (lr > 0) for lr in self.lr_grid)
                                         or len(set(self.lr_grid)) != len(self.lr_grid)):
            raise SettingsError(f"--lr-grid takes distinct rates > 0, e.g. 0.02,0.05,0.1 (got {list(self.lr_grid)})")
        bad_arms = [a for a in self.arms if a not in ARM_KINDS]
        if not self.arms or bad_arms or len(set(self.arms)) != len(self.arms) or "scratch" not in self.arms:
            raise SettingsError(f"--arms takes scratch and any of {', '.join(ARM_KINDS[1:])}, comma-separated, each "
                                f"once (got {','.join(self.arms)})")
        if self.min_steps < 0:
            raise SettingsError(f"--min-steps must be >= 0 (got {self.min_steps})")
        if self.seeds < 1 or self.epochs < 1 or self.batch_size < 1 or self.bn_batches < 1 or self.jobs < 1:
            raise SettingsError("--seeds, --epochs, --batch-size, --bn-batches and --jobs must be at least 1")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise SettingsError(f"--fractions takes shares in (0, 1], e.g. 1,0.1,0.03 (got {list(self.fractions)})")
        if not 0 < self.val_fraction < 1:
            raise SettingsError(f"--val-fraction must be in (0, 1) (got {self.val_fraction})")
        bad = [m for m in self.bn if m not in BN_MODES]
        if not self.bn or bad:
            raise SettingsError(f"--bn takes {', '.join(BN_MODES)} (comma-separated; got {','.join(self.bn)})")
        if self.stages is not None and (not self.stages or any(s not in (1, 2, 3) for s in self.stages)):
            raise SettingsError(f"--stages takes learngene stages among 1, 2, 3 (got {list(self.stages)})")
        if not (self.lr > 0) or self.weight_decay < 0 or self.kd_weight < 0:
            raise SettingsError("--lr must be > 0, --weight-decay and --kd-weight >= 0")
        if any(v is not None and v < 1 for v in (self.train_limit, self.val_limit, self.test_limit)):
            raise SettingsError("--train-limit, --val-limit and --test-limit must be at least 1")
        if self.img_size is not None and self.img_size < 8:
            raise SettingsError(f"--img-size must be at least 8 (got {self.img_size})")

    @property
    def learning_rates(self) -> tuple[float, ...]:
        """The rates every arm is trained with: the grid, or --lr alone."""
        return self.lr_grid or (self.lr,)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (for the record)."""
        return to_json(self)


@dataclass(frozen=True)
class Arm:
    """One initialisation compared: scratch, a learngene transplanted with given choices, or the KD baseline."""

    name: str
    bundle: str | Path | None = None  # None: no learngene (scratch, or KD from scratch)
    bn: str = "transfer"
    rescale: bool = False
    stages: tuple[int, ...] | None = None
    kd: bool = False
    control: str | None = None  # "random-matched" | "shuffled": the learngene's plan with its values replaced

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.bn not in BN_MODES:
            raise SettingsError(f"arm {self.name}: bn must be one of {', '.join(BN_MODES)} (got {self.bn!r})")
        if self.control is not None and (self.control not in CONTROLS or self.bundle is None):
            raise SettingsError(f"arm {self.name}: a control ({', '.join(CONTROLS)}) needs a bundle "
                                f"(got control {self.control!r})")

    @property
    def is_scratch(self) -> bool:
        """True for the baseline every other arm is paired with."""
        return self.bundle is None and not self.kd

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (what identifies the arm's runs, besides the bundle's content)."""
        return {"name": self.name, "bundle": None if self.bundle is None else str(self.bundle), "bn": self.bn,
                "rescale": self.rescale, "stages": None if self.stages is None else list(self.stages), "kd": self.kd,
                "control": self.control}


def default_arms(bundle: str | Path, settings: EvaluationSettings, teacher: bool = False) -> list[Arm]:
    """What `lgt evaluate` compares: scratch, then each of --arms once per --bn mode, and KD when a teacher is given."""
    arms = [Arm("scratch")]
    for kind in (k for k in settings.arms if k != "scratch"):
        for mode in settings.bn:
            name = kind if len(settings.bn) == 1 else f"{kind} bn={mode}"
            arms.append(Arm(name, bundle, mode, settings.rescale, settings.stages,
                            control=None if kind == "clkg" else kind))
    if teacher:
        arms.append(Arm("kd", kd=True))
    return arms

"""The inputs of a distillation run, checked and completed before anything runs (the library's, so that Python
callers get what `lgt distill` / `lgt extract` check): an ancestry that exists, a data folder that exists, and the
ancestry's architecture identified from its checkpoint when `arch` is not given."""

from __future__ import annotations

import os
from dataclasses import replace

from learngene_tools.distillation.config import DistillSettings, RunOptions
from learngene_tools.errors import NotFoundError, SettingsError
from learngene_tools.reporting import Advice


def prepare(settings: DistillSettings, options: RunOptions, *,
            synthetic: bool = False) -> tuple[DistillSettings, RunOptions, str | None]:
    """(settings with `arch` set, the options, how the ancestry was identified or None).

    `synthetic` is the command line's `--synthetic` (procedural images asked for explicitly)."""
    from learngene_tools.hub import is_hf_ref
    from learngene_tools.refs import resolve

    if not isinstance(settings, DistillSettings):
        raise SettingsError(f"settings= takes a DistillSettings (got {type(settings).__name__})")
    if not isinstance(options, RunOptions):
        raise SettingsError(f"options= takes a RunOptions (got {type(options).__name__})")
    if options.ancestry is None:
        raise SettingsError(Advice("give the ancestry checkpoint (or a --recipe that names it)",
                                   "RunOptions.ancestry is not set: give the ancestry checkpoint's path"))
    if synthetic and settings.data is not None:
        raise SettingsError("give one of --data DIR (a folder of images) and --synthetic (procedural images), not both")
    if settings.data is not None and not os.path.isdir(settings.data):  # os.path: never raises (a name too long)
        raise NotFoundError(Advice(
            f"{settings.data}: no such folder of images (--data takes a folder; without it, procedural images are used)",
            f"{settings.data}: no such folder of images (DistillSettings.data takes a folder; None distils on "
            "procedural images)"))
    if not is_hf_ref(options.ancestry) and not os.path.isfile(options.ancestry):
        raise NotFoundError(f"{options.ancestry}: no such ancestry checkpoint")
    identified = None
    if settings.arch is None:
        from learngene_tools.architectures.identify import identify_ancestry

        spec, how = identify_ancestry(resolve(options.ancestry), trust_pickle=options.trust_pickle)
        settings, identified = replace(settings, arch=spec), f"identified as {spec} ({how})"
    return settings, options, identified

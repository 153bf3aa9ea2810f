"""Evaluation (`lgt evaluate`): does a learngene help this descendant on this data, and by how much.

Modules: `settings` (what an evaluation computes, and the arms it compares), `data` (image
folders, idx files, a built-in synthetic task), `init` (the descendant at initialisation, with
the learngene transplanted in memory), `train` (the shared fine-tuning schedule), `kd` (the
feature-distillation baseline), `runner` (the grid, in parallel and resumable), `report`
(paired statistics, Markdown, PNG), `evaluate` (all of it), `progress` (what the CLI shows).
"""

"""What a model is: built from a spec, traced in execution order, its keys aligned, identified from a file.

`specs` builds a model from ``timm:NAME`` / ``torchvision:NAME`` / ``package.module:factory`` (with
the trust policy for code), `tracing` records one forward pass (strides, stage outputs), `keysets`
aligns a model's state_dict keys with a checkpoint's, `index` fingerprints every architecture the
installed packages build, and `identify` finds which one a checkpoint holds.
"""

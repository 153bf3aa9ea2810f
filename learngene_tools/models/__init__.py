"""The models the project provides: the auxiliary model, RepLKNet ancestries and the descendants (shared by every part)."""

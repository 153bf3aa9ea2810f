"""README's evidence section is generated from the committed study records, number for number."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).parent.parent / "recipes"


def test_readme_evidence_matches_the_committed_study_records():
    sys.path.insert(0, str(RECIPES))
    try:
        import study_knowledge as sk
    finally:
        sys.path.remove(str(RECIPES))
    if not any(p.is_file() for p in sk.records().values()):
        pytest.fail("no study record committed under recipes/results")
    assert sk.readme_section() == sk.readme_block(sk.analyse()), \
        "README's evidence section differs from the records: run `python recipes/study_knowledge.py report`"

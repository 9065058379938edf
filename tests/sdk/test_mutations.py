"""The mutation corpus: real products with one planted defect each, resealed, and the validator
must name the defect. Base products of every form must validate clean."""

from __future__ import annotations

from pathlib import Path

import pytest

import eoembed
from tests.sdk.mutations import FORMS, MUTATIONS, build_bases, cases, caught, run_case


@pytest.fixture(scope="session")
def bases(shared_data, tmp_path_factory) -> dict[str, Path]:
    return build_bases(tmp_path_factory.mktemp("mutation-bases"), shared_data)


@pytest.mark.parametrize("base", [*FORMS, "range", "indexed"])
def test_every_base_product_is_valid(bases, base):
    report = eoembed.validate(bases[base])
    assert report.findings == [], str(report)


def test_the_corpus_covers_every_level_and_form():
    assert len(MUTATIONS) >= 120
    levels = {m.level for m in MUTATIONS}
    assert {"collection", "item", "model item", "manifest", "footer", "geo", "rows", "vectors", "grid/sources", "index"} <= levels
    assert {form for _, form in cases()} >= set(FORMS)


@pytest.mark.parametrize("case", cases(), ids=[f"{m.level}:{m.name}:{form}" for m, form in cases()])
def test_each_planted_defect_is_found(bases, tmp_path, case):
    item, form = case
    report = run_case(bases, item, form, tmp_path)
    assert caught(report, item), f"{item.level} / {item.name} on {form}: expected {item.code}, got\n{report}"
    finding = next(f for f in report.findings if f.code == item.code)
    assert finding.message and str(finding).startswith(item.code)

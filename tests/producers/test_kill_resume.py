"""``mpirun -n 2 eoembed produce`` killed at seeded random moments, then ``--resume``: the product is
the one an uninterrupted run makes, valid, with nothing left beside it. ``benchmarks/kill_resume.py``
runs many more cases and prints a table."""

from __future__ import annotations

import pytest

from eoembed.producers.distribute import LOCK, staging_folder

from .killing import kill_and_resume, random_cases
from .test_resume import FLAGS, assert_same_product, reference, scene  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


@pytest.mark.parametrize("case", random_cases(5, seed=20261201), ids=lambda c: f"{c.kind}@{c.moment}"
                         + (f"+resume@{c.again_during_resume}" if c.again_during_resume is not None else ""))
def test_a_killed_job_resumes_to_the_same_product(tmp_path, scene, reference, case):  # noqa: F811
    out = tmp_path / "p"
    outcome = kill_and_resume(case, arguments=[scene, "--out", str(out), *FLAGS], out=out,
                              lock=staging_folder(out.absolute()) / LOCK)
    if "resume_rc" in outcome:
        assert outcome["resume_rc"] == 0, outcome["resume_stderr"]
        assert "Traceback" not in outcome["resume_stderr"]
    assert "Traceback" not in outcome["first"], outcome["first"]
    assert_same_product(out, reference)
    assert [p.name for p in tmp_path.iterdir()] == ["p"], "nothing is left beside the product"

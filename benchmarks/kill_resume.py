"""Kill ``mpirun -n 2 eoembed produce`` at many seeded random moments, resume, and tabulate.

Each case kills a real 2-rank job (kill -9 of rank 1 or of both ranks, SIGINT or SIGTERM to
mpirun; every third case kills the first resume too), then resumes until the product exists, and
checks that it equals an uninterrupted run's product, validates, and has nothing left beside it.

    .venv/bin/python benchmarks/kill_resume.py --cases 40 --seed 1

The scene is a 160 x 160 px crop of the real NC Landsat-7 scene (100 chips of 16 px, 10 units).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.producers.killing import BIN, kill_and_resume, random_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shared", default=str(REPO.parent / "shared"), help="the shared test material")
    args = parser.parse_args()

    import subprocess

    import eoembed
    from eoembed.producers.distribute import LOCK, staging_folder
    from tests.producers.test_distribute import data_tables
    from tests.producers.test_resume import FLAGS, crop

    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    scene = crop(Path(args.shared) / "data/imagery/nc_landsat7_landclass96/landsat_multiband.tif", work / "nc-crop.tif",
                 col=200, row=150, size=160)
    reference = work / "reference"
    subprocess.run([str(BIN / "mpirun"), "-n", "1", str(BIN / "eoembed"), "produce", "--no-progress", scene,
                    "--out", str(reference), *FLAGS], check=True, capture_output=True)
    expected = data_tables(reference)
    print(f"{'case':>4}  {'kill':<15} {'moment':>10}  {'resume killed at':>16}  {'left by the kill(s)':<38} {'result':<10}")
    failures = 0
    for number, case in enumerate(random_cases(args.cases, seed=args.seed)):
        folder = work / f"case{number}"
        folder.mkdir()
        out = folder / "p"
        outcome = kill_and_resume(case, arguments=[scene, "--out", str(out), *FLAGS], out=out,
                                  lock=staging_folder(out) / LOCK)
        problems = []
        if outcome.get("resume_rc", 0) != 0:
            problems.append(f"resume exit {outcome['resume_rc']}")
        if any("Traceback" in str(outcome.get(k, "")) for k in ("first", "second", "resume_stderr")):
            problems.append("traceback")
        if (out / "collection.json").exists():
            got = data_tables(out)
            if list(got) != list(expected) or any(not got[k].equals(expected[k]) for k in expected):
                problems.append("rows differ")
            if eoembed.validate(out).findings:
                problems.append("invalid")
        else:
            problems.append("no product")
        if [p.name for p in folder.iterdir()] != ["p"]:
            problems.append("leftovers")
        left = outcome["left_by_kill"] + (f" / {outcome['left_by_second_kill']}" if "left_by_second_kill" in outcome else "")
        again = str(case.again_during_resume or "-")
        print(f"{number:>4}  {case.kind:<15} {str(case.moment):>10}  {again:>16}  {left:<38} {'; '.join(problems) or 'identical':<10}",
              flush=True)
        failures += bool(problems)
        shutil.rmtree(folder)
    print(f"{args.cases - failures}/{args.cases} cases gave the identical, valid product with nothing left beside it "
          "(moment: NuNs = N units committed by the run, then N s; 0u is planning, 10u the commit)")
    shutil.rmtree(work)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

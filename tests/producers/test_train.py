"""`eoembed train` under real MPI ranks (`mpirun -n 1` and `-n 2`) on real Landsat-7 imagery."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import eoembed
from eoembed._errors import TrainingConfigError
from eoembed.producers.compressor import load_checkpoint
from eoembed.producers.encoders import get_encoder, list_encoders
from eoembed.producers.train import DIGEST_ENV, FAULT_ENV
from eoembed.producers.trainconfig import config_from_dict
from eoembed.producers.trainset import apply_transforms, epoch_transforms
from tests.producers.training import BIN, settings, train, write_config

YEAR = "2000-01-01T00:00:00Z/2000-12-31T23:59:59Z"
pytestmark = pytest.mark.mpi
KNOWN = ", ".join(e["name"] for e in list_encoders())


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["encoder_state"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert list(first) == list(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def nc_scene(shared_data) -> str:
    return str(shared_data / "imagery/nc_landsat7_landclass96/landsat_multiband.tif")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, nc_scene) -> tuple[Path, Path]:
    """An uninterrupted 3-epoch run on 2 ranks that logs every rank's weights after every step."""
    root = tmp_path_factory.mktemp("train2")
    digests = root / "digests"
    digests.mkdir()
    config = write_config(root / "train.toml", settings(nc_scene, root / "run"))
    run = train(2, config, env={DIGEST_ENV: str(digests)})
    assert run.returncode == 0, run.stderr
    assert "on 2 rank(s) [gloo, cpu]" in run.stderr
    return root, digests


def test_two_ranks_hold_the_same_weights_after_every_step(two_rank_run):
    root, digests = two_rank_run
    summary = json.loads((root / "run/summary.json").read_text())
    rank0 = (digests / "rank-0.log").read_text().splitlines()
    rank1 = (digests / "rank-1.log").read_text().splitlines()
    assert len(rank0) == summary["steps"] == 3 * (summary["steps"] // 3) and summary["steps"] >= 6
    assert rank0 == rank1
    assert len({line.split()[2] for line in rank0}) == len(rank0), "every step must change the weights"
    assert summary["ranks"] == 2 and summary["chips"] >= 32
    assert sorted(p.name for p in (root / "run/checkpoints").iterdir()) == [f"epoch-000{e}.pt" for e in (1, 2, 3)]
    assert (root / "run/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((root / "run/history.json").read_text())
    assert len(history["epoch_loss"]) == 3 and len(history["step_loss"]) == summary["steps"]


def test_a_killed_two_rank_run_resumes_to_the_same_weights(tmp_path, two_rank_run, nc_scene):
    root, _ = two_rank_run
    steps_per_epoch = json.loads((root / "run/summary.json").read_text())["steps"] // 3
    config = write_config(tmp_path / "train.toml", settings(nc_scene, tmp_path / "run"))
    killed = train(2, config, env={FAULT_ENV: f"1:{steps_per_epoch + 1}"})
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("*.pt")) == ["epoch-0001.pt"]
    assert not (tmp_path / "run/encoder.pt").exists()
    refused = train(2, config)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    changed = write_config(tmp_path / "changed.toml", settings(nc_scene, tmp_path / "run", lr=1e-2))
    mismatch = train(2, changed, "--resume")
    assert mismatch.returncode == 2 and "lr differ" in mismatch.stderr
    resumed = train(2, config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "2 epoch(s)" in resumed.stderr
    assert_same_weights(tmp_path / "run/encoder.pt", root / "run/encoder.pt")
    reference = load_checkpoint(root / "run/checkpoints/epoch-0003.pt")["training"]
    again = load_checkpoint(tmp_path / "run/checkpoints/epoch-0003.pt")["training"]
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
    assert reference["history"]["epoch_loss"] == again["history"]["epoch_loss"]


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory, nc_scene) -> Path:
    root = tmp_path_factory.mktemp("train1")
    run = train(1, write_config(root / "train.toml", settings(nc_scene, root / "run")))
    assert run.returncode == 0, run.stderr
    return root / "run"


def test_a_killed_one_rank_run_resumes_to_the_same_weights(tmp_path, one_rank_run, nc_scene):
    steps_per_epoch = json.loads((one_rank_run / "summary.json").read_text())["steps"] // 3
    config = write_config(tmp_path / "train.toml", settings(nc_scene, tmp_path / "run"))
    killed = train(1, config, env={FAULT_ENV: f"0:{2 * steps_per_epoch + 1}"})
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("*.pt")) == ["epoch-0001.pt", "epoch-0002.pt"]
    resumed = train(1, config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "run/encoder.pt", one_rank_run / "encoder.pt")


def test_distillation_of_rcf_into_a_small_student(tmp_path, nc_scene, shared_data):
    values = settings(nc_scene, tmp_path / "run", objective="distill", teacher="rcf",
                      teacher_options={"features": 64, "seed": 1}, epochs=2)
    run = train(1, write_config(tmp_path / "train.toml", values))
    assert run.returncode == 0, run.stderr
    saved = load_checkpoint(tmp_path / "run/encoder.pt")
    [teacher] = saved["teachers"]
    assert teacher["name"] == "rcf" and teacher["dim"] == 64 and teacher["options"] == {"features": 64, "seed": 1}
    assert len(teacher["weights_sha256"]) == 64
    history = json.loads((tmp_path / "run/history.json").read_text())
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    chips = np.load(shared_data / "fewshot/nc_landclass96/chips.npz")["X"][:10, :5].astype(np.float32)
    vectors = get_encoder(f"checkpoint:{tmp_path / 'run/encoder.pt'}").encode(chips)
    assert vectors.shape == (10, 16) and np.isfinite(vectors).all()


def test_masked_autoencoder_on_one_rank(tmp_path, nc_scene):
    values = settings(nc_scene, tmp_path / "run", objective="masked-autoencoder", mask_ratio=0.5, epochs=1)
    run = train(1, write_config(tmp_path / "train.toml", values))
    assert run.returncode == 0, run.stderr
    assert load_checkpoint(tmp_path / "run/encoder.pt")["objective"] == "masked-autoencoder"


def test_a_batch_the_ranks_cannot_share_is_refused(tmp_path, nc_scene):
    run = train(2, write_config(tmp_path / "train.toml", settings(nc_scene, tmp_path / "run", batch_size=33)))
    assert run.returncode == 2 and "batch_size = 33 is not divisible by the 2 ranks" in run.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 0.1}, "unknown key(s) learning_rate"),
        ({"objective": "vae"}, "objective = 'vae'; give one of autoencoder, masked-autoencoder, distill"),
        ({"chip_size": 6}, "chip_size = 6; 2 stages halve the chip 2 times: give a multiple of 4"),
        ({"dim": 0}, "dim = 0; give a whole number >= 1"),
        ({"epochs": 1.5}, "epochs = 1.5; give a whole number >= 1"),
        ({"lr": -1.0}, "lr = -1.0; give a number > 0.0"),
        ({"objective": "distill"}, "teachers = None; distill needs teacher encoders"),
        ({"objective": "pca"}, "teachers = None; pca needs teacher encoders"),
        ({"objective": "distill", "teacher": "nope"}, f"teacher = 'nope'; give a registered encoder: {KNOWN}"),
        ({"objective": "distill", "teachers": [{"name": "stats"}, {"name": "rfc"}]},
         f"teachers[1].name = 'rfc'; give a registered encoder: {KNOWN}"),
        ({"objective": "distill", "teachers": [{"name": "stats", "option": {}}]},
         "teachers[0].option = {}; a teacher has only the keys name, options, weight"),
        ({"objective": "distill", "teachers": [{"name": "stats", "weight": 0}]},
         "teachers[0].weight = 0.0; give a number > 0.0"),
        ({"objective": "distill", "teachers": [{"name": "rcf", "options": 512}]},
         "teachers[0].options = 512; give a table of the teacher's options"),
        ({"objective": "distill", "teachers": []}, "teachers = []; give a list of tables"),
        ({"objective": "distill", "teacher": "rcf", "teachers": [{"name": "stats"}]},
         "give either teacher (one) or teachers (a list), not both"),
        ({"dim": 1025}, "dim = 1025; give at most 1024 values per chip"),
        ({"mixed_precision": "fp8"}, "mixed_precision = 'fp8'; give one of auto, none, bf16, fp16"),
        ({"max_chips": 16}, "max_chips = 16; sample at least batch_size = 32 chips"),
        ({"inputs": []}, "inputs = []; give a list of image paths"),
    ],
)
def test_bad_config_values_are_named(nc_scene, tmp_path, change, message):
    with pytest.raises(TrainingConfigError) as caught:
        config_from_dict({**settings(nc_scene, tmp_path / "run"), **change})
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_bad_config_fails_before_any_rank_trains(tmp_path, nc_scene):
    config = write_config(tmp_path / "train.toml", settings(nc_scene, tmp_path / "run", widths=[8, "wide"]))
    run = subprocess.run([str(BIN / "eoembed"), "train", "--config", str(config)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "widths[] = 'wide'; give a whole number >= 1" in run.stderr
    assert not (tmp_path / "run").exists()


def test_the_eight_flips_and_turns_are_distinct_and_seeded():
    chip = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    variants = [apply_transforms([chip], np.array([code]))[0][0] for code in range(8)]
    assert len({v.tobytes() for v in variants}) == 8
    assert np.array_equal(variants[0], chip[0])
    codes = epoch_transforms(3, 5, 1000, augment=True)
    assert np.array_equal(codes, epoch_transforms(3, 5, 1000, augment=True))
    assert not np.array_equal(codes, epoch_transforms(3, 6, 1000, augment=True))
    assert set(codes.tolist()) == set(range(8))
    assert not epoch_transforms(3, 5, 10, augment=False).any()


# Compressing several frozen teachers (the form that won the Embed2Scale challenge) -------------------

PRESTO_LANDSAT = {"band_map": {"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11"}, "input_scale": 10000 / 255}
TEACHERS = [{"name": "stats"}, {"name": "rcf", "options": {"features": 32, "seed": 3}, "weight": 2.0},
            {"name": "presto", "options": PRESTO_LANDSAT}]


def distill_settings(scene: str, out: Path) -> dict:
    return settings(scene, out, objective="distill", teachers=TEACHERS, dim=24)


@pytest.fixture(scope="module")
def multi_teacher_run(tmp_path_factory, nc_scene) -> tuple[Path, Path]:
    """An uninterrupted 3-epoch distillation of stats + rcf + presto on 2 ranks, logging every step."""
    root = tmp_path_factory.mktemp("distill2")
    digests = root / "digests"
    digests.mkdir()
    run = train(2, write_config(root / "train.toml", distill_settings(nc_scene, root / "run")),
                env={DIGEST_ENV: str(digests)})
    assert run.returncode == 0, run.stderr
    return root, digests


def test_several_teachers_distil_in_step_on_two_ranks_and_resume_to_the_same_weights(tmp_path, multi_teacher_run,
                                                                                     nc_scene):
    root, digests = multi_teacher_run
    rank0 = (digests / "rank-0.log").read_text().splitlines()
    assert rank0 == (digests / "rank-1.log").read_text().splitlines()
    assert len({line.split()[2] for line in rank0}) == len(rank0) >= 6
    history = json.loads((root / "run/history.json").read_text())
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    steps_per_epoch = len(rank0) // 3
    config = write_config(tmp_path / "train.toml", distill_settings(nc_scene, tmp_path / "run"))
    killed = train(2, config, env={FAULT_ENV: f"0:{steps_per_epoch + 2}"})
    assert killed.returncode != 0
    resumed = train(2, config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "run/encoder.pt", root / "run/encoder.pt")


def test_the_distilled_product_records_its_teachers_and_size(tmp_path, multi_teacher_run, nc_scene):
    root, _ = multi_teacher_run
    encoder = root / "run/encoder.pt"
    saved = load_checkpoint(encoder)
    assert [t["name"] for t in saved["teachers"]] == ["stats", "rcf", "presto"]
    assert [t["dim"] for t in saved["teachers"]] == [25, 32, 128]
    assert saved["teachers"][2]["weights_sha256"] == get_encoder("presto", **PRESTO_LANDSAT).weights_sha256()
    out = tmp_path / "p"
    run = subprocess.run([str(BIN / "mpirun"), "-n", "1", str(BIN / "eoembed"), "produce", nc_scene, "--out", str(out),
                          "--chip-size", "8", "--encoder", f"checkpoint:{encoder}", "--datetime", YEAR,
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert eoembed.validate(out).findings == []
    model = eoembed.open(out).metadata["model"]
    assert model["output"]["dim"] == model["parameters"]["dim"] == 24
    card = model["parameters"]["teachers"]
    assert [(t["name"], t["options"], t["weight"]) for t in card] == [
        ("stats", {}, 1.0), ("rcf", {"features": 32, "seed": 3}, 2.0), ("presto", PRESTO_LANDSAT, 1.0)]
    assert [t["weights_sha256"] for t in card] == [t["weights_sha256"] for t in saved["teachers"]]
    assert card[1]["weights_sha256"] is not None and card[0]["weights_sha256"] is None


def test_teacher_targets_are_computed_once_for_every_view(nc_scene, tmp_path, monkeypatch):
    """Augmented chips get the targets of their own flip/turn; invariant teachers are encoded once."""
    from mpi4py import MPI

    from eoembed.producers.teachers import Teachers
    from eoembed.producers.trainset import sample_chips

    config = config_from_dict(distill_settings(nc_scene, tmp_path / "run"))
    sample = sample_chips(config)
    teachers = Teachers.fit(MPI.COMM_SELF, config.teachers, sample, chip_size=8, device="cpu", cache=tmp_path / "cache")
    views = teachers.target_views(augment=True)
    assert [len(v) for v in views.per_teacher] == [1, 8, 1]  # stats and presto ignore flips and turns
    index, codes = np.array([0, 5, 9]), np.array([0, 3, 6], dtype=np.int8)
    pixels, valid = apply_transforms([sample.pixels[index], sample.valid[index]], codes)
    assert np.allclose(views.take(index, codes), teachers.targets(pixels, valid), atol=1e-5)
    # the weighted squared error: rcf (weight 2) counts for half, whatever the teachers' sizes
    scale = teachers.scale ** 2
    assert np.allclose([scale[:25].sum(), scale[25:57].sum(), scale[57:].sum()], [0.25, 0.5, 0.25])
    # kept in the cache: stats and presto once, rcf in its 8 views; a second build reads them back
    kept = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.npy"))
    assert kept == ["presto"] + ["rcf"] * 8 + ["stats"]
    def refuse(*args):
        raise AssertionError("the cached features were encoded again")

    monkeypatch.setattr("eoembed.producers.teachers._encode_shared", refuse)
    again = Teachers.fit(MPI.COMM_SELF, config.teachers, sample, chip_size=8, device="cpu", cache=tmp_path / "cache")
    assert np.array_equal(again.target_views(augment=True).take(index, codes), views.take(index, codes))


# The training-free baseline: rcf averaged over seasons, PCA to D ----------------------------------------

@pytest.fixture(scope="module")
def two_season_scene(tmp_path_factory, nc_scene) -> str:
    """Bands B1-B5 of the NC scene as two seasons (the second darker and hazier, as a winter scene),
    time-major and named BAND@SEASON as stacks name them."""
    import rasterio

    path = tmp_path_factory.mktemp("seasons") / "two-seasons.tif"
    with rasterio.open(nc_scene) as src:
        window = rasterio.windows.Window(0, 0, 96, 64)
        summer = src.read([1, 2, 3, 4, 5], window=window).astype(np.float32)
        profile = {**src.profile, "count": 10, "dtype": "float32", "width": 96, "height": 64,
                   "transform": src.transform, "nodata": None}  # the window starts at the origin
    winter = summer * 0.7 + 12.0
    with rasterio.open(path, "w", **{k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}) as dst:
        dst.write(np.concatenate([summer, winter]))
        for i, name in enumerate([f"B{b}@{s}" for s in ("summer", "winter") for b in range(1, 6)], start=1):
            dst.set_band_description(i, name)
    return str(path)


def pca_settings(scene: str, out: Path) -> dict:
    return settings(scene, out, objective="pca", dim=12, max_chips=96,
                    teachers=[{"name": "rcf", "options": {"features": 64, "seasons": 2, "seed": 5}}])


def test_the_pca_baseline_is_deterministic_and_produces_a_valid_product(tmp_path, two_season_scene):
    runs = {}
    for ranks in (1, 2):
        config = write_config(tmp_path / f"pca{ranks}.toml", pca_settings(two_season_scene, tmp_path / f"run{ranks}"))
        run = train(ranks, config)
        assert run.returncode == 0, run.stderr
        assert "PCA of the teachers' features" in run.stderr
        runs[ranks] = load_checkpoint(tmp_path / f"run{ranks}/encoder.pt")
    for name, tensor in runs[1]["encoder_state"].items():
        assert torch.equal(tensor, runs[2]["encoder_state"][name]), name
    [teacher] = runs[1]["teachers"]
    assert teacher["options"]["seasons"] == 2 and teacher["dim"] == 64 and teacher["state"]["n_bands"] == 10
    out = tmp_path / "p"
    encoder = tmp_path / "run2/encoder.pt"
    run = subprocess.run([str(BIN / "mpirun"), "-n", "2", str(BIN / "eoembed"), "produce", two_season_scene, "--out",
                          str(out), "--chip-size", "8", "--encoder", f"checkpoint:{encoder}", "--datetime", YEAR,
                          "--no-progress", "--unit-chips", "20"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert eoembed.validate(out).findings == []
    product = eoembed.open(out)
    model = product.metadata["model"]
    assert model["output"]["dim"] == 12 and model["input"]["normalization"] == {"method": "none"}
    assert model["parameters"]["teachers"][0]["weights_sha256"] == teacher["weights_sha256"]
    # the product holds what the checkpoint encoder computes, chip by chip, in any batch
    from eoembed.producers.trainset import sample_chips

    sample = sample_chips(config_from_dict({**pca_settings(two_season_scene, tmp_path / "x"), "max_chips": 10 ** 6}))
    baseline = get_encoder(f"checkpoint:{encoder}")
    whole = baseline.encode(sample.pixels, sample.valid)
    assert np.array_equal(whole[:7], baseline.encode(sample.pixels[:7], sample.valid[:7]))
    assert product.num_rows == len(sample) == 96
    assert np.allclose(np.sort(product.to_numpy(), axis=0), np.sort(whole, axis=0), atol=1e-6)


def test_a_pca_wider_than_its_teachers_is_refused(tmp_path, nc_scene):
    values = settings(nc_scene, tmp_path / "run", objective="pca", dim=26, teachers=[{"name": "stats"}])
    run = train(1, write_config(tmp_path / "train.toml", values))
    assert run.returncode == 2
    assert "dim = 26, but the PCA of 204 chips x 25 teacher features has at most 25 components" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_unknown_teacher_fails_before_any_rank_trains(tmp_path, nc_scene):
    values = settings(nc_scene, tmp_path / "run", objective="distill", teachers=[{"name": "stats"}, {"name": "galileo-xl"}])
    run = subprocess.run([str(BIN / "eoembed"), "train", "--config", str(write_config(tmp_path / "t.toml", values))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"teachers[1].name = 'galileo-xl'; give a registered encoder: {KNOWN}" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "run").exists()

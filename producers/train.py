"""Train a compressor on many MPI ranks: ``mpirun -n N eoembed train --config FILE [--resume]``.

Every rank samples the same chips (:mod:`.trainset`), builds the same network (:mod:`.compressor`)
from the seed and trains it under torch DistributedDataParallel: the process group is set up from
MPI (rank 0 picks the port and broadcasts it), gloo on CPUs and NCCL on GPUs (one GPU per local
rank, bf16 autocast by default). A DistributedSampler gives each rank its share of every epoch; the
flips and turns of an epoch come from the seed and the epoch alone. After every epoch rank 0 writes a
checkpoint atomically and redraws the loss curve; ``--resume`` continues from the last checkpoint and
ends with the weights an uninterrupted run ends with. The result, ``OUT/encoder.pt``, is an encoder
for ``eoembed produce --encoder checkpoint:OUT/encoder.pt``.

Objectives: ``autoencoder`` (reconstruct the chip through the ``dim`` bottleneck),
``masked-autoencoder`` (the same, from chips with 2x2 blocks hidden, scored on the hidden pixels),
``distill`` (regress the concatenated, standardised features of several frozen teachers through the
bottleneck: the form that won the Embed2Scale challenge) and ``pca`` (no steps: the teachers'
features reduced by a PCA fitted on the training chips, the challenge's training-free entry).
Teachers' features are computed once before the first step (:mod:`.teachers`), and the chips are
standardised once: a step only gathers, turns and feeds its batch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eoembed._errors import CheckpointError, EoembedError, TrainingConfigError

from .compressor import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_atomic, state_sha256
from .trainconfig import RESUMABLE_CHANGES, TEACHER_OBJECTIVES, TrainConfig
from .trainset import ChipSample, apply_transforms, epoch_block_masks, epoch_transforms, sample_chips

# Testing recovery: a rank SIGKILLs itself after this many optimiser steps of the process ("RANK:N").
FAULT_ENV = "EOEMBED_FAULT_KILL_AFTER_STEPS"
# Testing synchronisation: each rank appends "epoch step sha256-of-weights" lines to FOLDER/rank-R.log.
DIGEST_ENV = "EOEMBED_TRAIN_DIGESTS"
CHECKPOINTS = "checkpoints"
TEACHER_CACHE = "teacher-features"  # the teachers' features of the training chips, kept for --resume
ENCODER_FILE = "encoder.pt"


@dataclass
class TrainSummary:
    ranks: int
    device: str
    chips: int
    epochs: int
    epochs_run: int
    steps: int
    samples: int
    seconds: float  # the optimisation steps alone (no sampling, checkpoints or plots)
    wall_seconds: float
    final_loss: float
    encoder: str
    weights_sha256: str
    backend: str

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def checkpoint_path(out: Path, epoch: int) -> Path:
    return out / CHECKPOINTS / f"epoch-{epoch:04d}.pt"


def last_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("epoch-*.pt"))
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def init_process_group(comm, device: str) -> str:
    """torch.distributed from MPI: rank and size from the communicator, address and port chosen by
    rank 0 (``MASTER_ADDR``/``MASTER_PORT`` when the launcher sets them) and broadcast. Returns the backend."""
    from datetime import timedelta

    import torch.distributed as dist

    rank, size = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(socket.gethostname())
    address = None
    if rank == 0:
        same_node = len(set(hosts)) == 1
        host = os.environ.get("MASTER_ADDR") or ("127.0.0.1" if same_node else socket.gethostbyname(socket.gethostname()))
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        address = (host, port)
    host, port = comm.bcast(address, root=0)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=size,
                            timeout=timedelta(minutes=10))
    return backend


def _precision(config: TrainConfig, device: str):
    """(autocast dtype or None, use a gradient scaler)."""
    import torch

    choice = config.mixed_precision
    if choice == "auto":
        choice = "bf16" if device.startswith("cuda") else "none"
    if choice != "none" and not device.startswith("cuda"):
        raise TrainingConfigError(f"training config: mixed_precision = {config.mixed_precision!r} needs a GPU; "
                                  "this rank runs on the CPU: use \"auto\" or \"none\"")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice], choice == "fp16"


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in (*RESUMABLE_CHANGES, "out")}


def _plan(config: TrainConfig, *, resume: bool, overwrite: bool) -> Path | None:
    """Rank 0: check the output folder; the checkpoint to resume from (None: start afresh)."""
    out = Path(config.out)
    previous = last_checkpoint(out)
    if resume:
        if previous is None:
            raise CheckpointError(f"--resume: {out / CHECKPOINTS} holds no checkpoint; run without --resume to start")
        saved = load_checkpoint(previous)["config"]
        if _comparable(saved) != _comparable(config.to_dict()):
            changed = sorted(k for k in _comparable(config.to_dict()) if _comparable(saved).get(k) != config.to_dict()[k])
            raise CheckpointError(f"--resume: {previous} was trained with other settings ({', '.join(changed)} differ); "
                                  f"only {', '.join(RESUMABLE_CHANGES)} may change on resume")
        return previous
    if previous is not None or (out / ENCODER_FILE).exists():
        if not overwrite:
            raise CheckpointError(f"{out} already holds a training run; pass --resume to continue it or --overwrite "
                                  "to start again")
        for stale in [*(out / CHECKPOINTS).glob("*.pt"), out / ENCODER_FILE]:
            stale.unlink(missing_ok=True)
    return None


def _weights_digest(model) -> str:
    return state_sha256(model.state_dict())


def _check_in_step(comm, model, epoch: int) -> None:
    """Every rank must hold the same weights; a difference means the gradients were not shared."""
    digests = comm.allgather(_weights_digest(model))
    if len(set(digests)) != 1:
        raise EoembedError(f"after epoch {epoch} the ranks hold different weights ({digests}); "
                           "the gradient all-reduce did not run")


def _loss_curve(out: Path, history: dict) -> None:
    """loss.png: the loss of every step on rank 0 and each epoch's mean over all ranks."""
    from eoembed._plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = np.arange(1, len(history["step_loss"]) + 1)
    ax.plot(steps, history["step_loss"], lw=0.8, alpha=0.5, label="step (rank 0)")
    ends = np.cumsum(history["epoch_steps"])
    ax.plot(ends, history["epoch_loss"], "o-", label="epoch mean (all ranks)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(history.get("title", "training loss"))
    ax.legend()
    fig.tight_layout()
    tmp = out / ".loss.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out / "loss.png")


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> TrainSummary | None:
    """Train on every rank of MPI.COMM_WORLD (one rank without mpirun). Returns the summary on rank 0."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read at CUDA start
    from .distribute import _set_threads, _world, fault_after
    from .encoders import select_device

    comm, local_ranks, local_rank = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    _set_threads(local_ranks)

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    if config.batch_size % size:
        raise TrainingConfigError(f"training config: batch_size = {config.batch_size} is not divisible by the "
                                  f"{size} ranks; give a multiple of {size}")
    out = Path(config.out).absolute()
    plan: Any = None
    if rank == 0:
        try:
            plan = _plan(config, resume=resume, overwrite=overwrite)
        except Exception as error:  # every rank must learn it, or the others would wait forever
            plan = error
    plan = comm.bcast(plan, root=0)
    if isinstance(plan, Exception):
        raise plan
    resume_from: Path | None = plan

    sample = sample_chips(config)
    fingerprints = comm.allgather(sample.fingerprint())
    if len(set(fingerprints)) != 1:
        raise EoembedError("the ranks read different training chips; do all ranks see the same input files?")
    device = select_device(local_rank)
    teachers = None
    if config.objective in TEACHER_OBJECTIVES:
        from .teachers import Teachers

        teachers = Teachers.fit(comm, config.teachers, sample, chip_size=config.chip_size, device=device,
                                cache=config.teacher_cache or out / TEACHER_CACHE)
    if config.objective == "pca":
        return _train_pca(comm, config, sample, teachers, out)
    targets = teachers.target_views(augment=config.augment) if teachers is not None else None
    chips = sample.standardize(sample.pixels, sample.valid)  # once: flips and turns commute with it
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    autocast_dtype, use_scaler = _precision(config, device)
    backend = init_process_group(comm, device)
    try:
        architecture = {"bands": len(sample.bands), "chip_size": config.chip_size, "dim": config.dim,
                        "widths": list(config.widths)}
        torch.manual_seed(config.seed)
        from .compressor import build_training_model

        model = build_training_model(architecture, config.objective, teachers.dim if teachers else None).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        history: dict[str, Any] = {"step_loss": [], "epoch_loss": [], "epoch_steps": [],
                                   "title": f"{config.objective}, dim {config.dim}, {size} rank(s)"}
        start_epoch = 0
        if resume_from is not None:
            saved = load_checkpoint(resume_from)["training"]
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            history = saved["history"]
            start_epoch = int(saved["epoch"])
        ddp = DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
                                      gradient_as_bucket_view=True)

        per_rank = config.batch_size // size
        sampler = DistributedSampler(range(len(sample)), num_replicas=size, rank=rank, shuffle=True, seed=config.seed,
                                     drop_last=True)
        steps_per_epoch = len(sampler) // per_rank
        if steps_per_epoch == 0:
            raise TrainingConfigError(f"training config: {len(sample)} chips give no full batch of {per_rank} per rank")

        def document(epoch: int, *, training: bool) -> dict:
            doc = _document(config, sample, architecture=architecture,
                            encoder_state={k: v.detach().cpu() for k, v in model.encoder.state_dict().items()},
                            teachers=teachers.card() if teachers else None,
                            summary={"epochs": epoch, "chips": len(sample), "seed": config.seed,
                                     "final_loss": history["epoch_loss"][-1] if history["epoch_loss"] else None})
            if training:
                doc["training"] = {"epoch": epoch, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                   "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                   "history": history}
            return doc

        fault = fault_after(FAULT_ENV)
        digest_dir = os.environ.get(DIGEST_ENV)
        digest_log = open(Path(digest_dir) / f"rank-{rank}.log", "a") if digest_dir else None
        bar = None
        if rank == 0 and config.progress:
            from tqdm import tqdm

            bar = tqdm(total=(config.epochs - start_epoch) * steps_per_epoch, unit="step", desc="eoembed train",
                       file=sys.stderr, dynamic_ncols=True)
        steps_done = 0
        started = time.perf_counter()
        step_seconds = 0.0
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
            codes = epoch_transforms(config.seed, epoch, len(sample), augment=config.augment)
            hidden = (epoch_block_masks(config.seed, epoch, len(sample), config.chip_size, config.mask_ratio)
                      if config.objective == "masked-autoencoder" else None)
            ddp.train()
            loss_sum = 0.0
            for step in range(steps_per_epoch):
                t0 = time.perf_counter()
                index = np.sort(order[step * per_rank : (step + 1) * per_rank])
                arrays = [chips[index], sample.valid[index]]
                if hidden is not None:
                    arrays.append(hidden[index])
                arrays = apply_transforms(arrays, codes[index])
                x = torch.from_numpy(arrays[0]).to(device)
                if hidden is not None:
                    mask = torch.from_numpy(arrays[2][:, None].astype(np.float32)).to(device)
                    x = x * (1.0 - mask)
                with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu",
                                    dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                    prediction = ddp(x)
                if targets is not None:  # targets are weight-scaled: their column sum is the weighted mean error
                    goal = torch.from_numpy(targets.take(index, codes[index])).to(device)
                    loss = ((prediction.float() - goal) ** 2).sum(dim=1).mean()
                else:
                    target = torch.from_numpy(arrays[0]).to(device)
                    weight = torch.from_numpy(arrays[1][:, None].astype(np.float32)).to(device)
                    if hidden is not None:
                        weight = weight * mask  # scored where hidden, as in masked autoencoders
                    squared = (prediction.float() - target) ** 2 * weight
                    loss = squared.sum() / (weight.sum().clamp_min(1.0) * x.shape[1])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                value = float(loss.detach())
                step_seconds += time.perf_counter() - t0
                loss_sum += value
                history["step_loss"].append(value)
                steps_done += 1
                if digest_log is not None:
                    digest_log.write(f"{epoch} {step} {_weights_digest(model)}\n")
                    digest_log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4g}")
                if fault and fault[0] == rank and steps_done >= fault[1]:
                    os.kill(os.getpid(), signal.SIGKILL)
            total, count = comm.allreduce(np.array([loss_sum, steps_per_epoch], dtype=np.float64))
            history["epoch_loss"].append(float(total / count))
            history["epoch_steps"].append(steps_per_epoch)
            _check_in_step(comm, model, epoch + 1)
            if rank == 0:
                save_atomic(document(epoch + 1, training=True), checkpoint_path(out, epoch + 1))
                _loss_curve(out, history)
                (out / "history.json").write_text(json.dumps(history) + "\n")
            comm.Barrier()
        wall = time.perf_counter() - started
        if bar is not None:
            bar.close()
        if digest_log is not None:
            digest_log.close()
        summary = None
        if rank == 0:
            final = save_atomic(document(config.epochs if start_epoch < config.epochs else start_epoch, training=False),
                                out / ENCODER_FILE)
            summary = _summarise(out, final, ranks=size, device=device, chips=len(sample), epochs=config.epochs,
                                 epochs_run=max(0, config.epochs - start_epoch), steps=steps_done,
                                 samples=steps_done * config.batch_size, seconds=step_seconds, wall_seconds=wall,
                                 final_loss=history["epoch_loss"][-1] if history["epoch_loss"] else float("nan"),
                                 backend=backend)
        comm.Barrier()
        return summary
    finally:
        dist.destroy_process_group()


def _document(config: TrainConfig, sample: ChipSample, *, architecture: dict, encoder_state: dict,
              teachers: list[dict] | None, summary: dict, normalization: dict | None = None) -> dict:
    """The checkpoint document every objective writes (the training state is added per epoch)."""
    if normalization is None:
        normalization = {"method": "standardize", "mean": [float(v) for v in sample.mean],
                         "std": [float(v) for v in sample.std]}
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "name": config.name or f"compressor-{config.objective}", "model_version": "1",
        "objective": config.objective, "architecture": architecture,
        "input": {"bands": sample.bands, "chip_size_px": config.chip_size, "gsd_m": sample.gsd,
                  "normalization": normalization},
        "encoder_state": encoder_state, "config": config.to_dict(), "teachers": teachers, "summary": summary,
    }


def _summarise(out: Path, final: Path, **figures: Any) -> TrainSummary:
    """Rank 0: the run's summary, also written to OUT/summary.json."""
    from .compressor import file_sha256

    summary = TrainSummary(**figures, encoder=str(final), weights_sha256=file_sha256(final))
    record = {**summary.__dict__, "samples_per_second": summary.samples_per_second}
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary


def _train_pca(comm, config: TrainConfig, sample: ChipSample, teachers, out: Path) -> TrainSummary | None:
    """The training-free compressor: the first ``dim`` principal components of the teachers' targets
    on the un-augmented training chips (float64, each component's largest entry made positive, so the
    result depends on the chips alone). Rank 0 writes ``OUT/encoder.pt``; it runs the teachers to produce."""
    import torch

    started = time.perf_counter()
    if config.dim > min(len(sample), teachers.dim):
        raise TrainingConfigError(f"training config: dim = {config.dim}, but the PCA of {len(sample)} chips x "
                                  f"{teachers.dim} teacher features has at most {min(len(sample), teachers.dim)} "
                                  "components; lower dim, add teachers or sample more chips")
    summary = None
    if comm.Get_rank() == 0:
        features = teachers.identity_targets().astype(np.float64)
        mean = features.mean(axis=0)
        centred = features - mean
        values, vectors = np.linalg.eigh(centred.T @ centred / len(features))
        components = vectors[:, ::-1][:, : config.dim].T.copy()
        lead = components[np.arange(config.dim), np.abs(components).argmax(axis=1)]
        components *= np.where(lead < 0, -1.0, 1.0)[:, None]
        residual = float(max(values[::-1][config.dim :].sum(), 0.0))  # per chip: squared error of the targets
        state = {"teacher_mean": torch.from_numpy(teachers.mean.copy()), "teacher_std": torch.from_numpy(teachers.std.copy()),
                 "feature_mean": torch.from_numpy(mean.astype(np.float32)),
                 "components": torch.from_numpy(np.ascontiguousarray(components, dtype=np.float32))}
        architecture = {"kind": "teacher-pca", "bands": len(sample.bands), "chip_size": config.chip_size,
                        "dim": config.dim, "widths": []}
        document = _document(config, sample, architecture=architecture, encoder_state=state,
                             teachers=teachers.checkpoint_entries(), normalization={"method": "none"},
                             summary={"epochs": 0, "chips": len(sample), "seed": config.seed, "final_loss": residual})
        final = save_atomic(document, out / ENCODER_FILE)
        summary = _summarise(out, final, ranks=comm.Get_size(), device="cpu", chips=len(sample), epochs=0,
                             epochs_run=0, steps=0, samples=0, seconds=0.0,
                             wall_seconds=time.perf_counter() - started, final_loss=residual, backend="none")
    comm.Barrier()
    return summary


def main_train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> int:
    """Run :func:`train` with MPI error handling: one failing rank aborts the job instead of hanging it."""
    from .distribute import run_or_abort

    summary, failed = run_or_abort(lambda: train(config, resume=resume, overwrite=overwrite), command="train")
    if failed is not None:
        return failed
    if summary is None:
        return 0
    if config.objective == "pca":
        print(f"fitted {summary.encoder}: PCA of the teachers' features of {summary.chips} chips to {config.dim} values "
              f"in {summary.wall_seconds:.1f} s; unexplained variance {summary.final_loss:.4g}; "
              f"use it with --encoder checkpoint:{summary.encoder}", file=sys.stderr)
        return 0
    print(
        f"trained {summary.encoder}: {summary.epochs_run} epoch(s) ({summary.steps} steps, {summary.samples} samples) "
        f"on {summary.ranks} rank(s) [{summary.backend}, {summary.device}] in {summary.wall_seconds:.1f} s, "
        f"{summary.samples_per_second:.0f} samples/s while stepping; final loss {summary.final_loss:.4g}; "
        f"use it with --encoder checkpoint:{summary.encoder}",
        file=sys.stderr,
    )
    return 0

"""DistributedDataParallel equivalence (medgen.training, chapter 60).

Two CPU processes on gloo (started with torch.multiprocessing, rendezvous on 127.0.0.1 only), each with batch 4,
must train the same weights as one process with batch 8: the sampler deals each rank every other index of the
same permutation, and DDP averages the gradients. Float reductions happen in a different order, so we compare
within a stated tolerance: max |difference| <= 1e-5 after 6 SGD steps (measured: <= 3e-8 for the weights, <= 1e-7 for the logged losses).
Checked for a one-phase step and for the two-phase adversarial AutoencoderStep (generator, then discriminator), in
float32; and in bf16 autocast (the default precision where bfloat16 is native), where a batch of 4 rounds differently
from one of 8, so the tolerance is bf16's: <= 2e-3 (measured: 6e-5 and 3e-4).
"""
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from medgen.training import AutoencoderStep, Trainer, TrainConfig, init_distributed, load_checkpoint
from helpers import free_port

TOL = {"fp32": 1e-5, "bf16": 2e-3}
STEPS = 6
RUNS = [(kind, prec) for prec in ("fp32", "bf16") for kind in ("one_phase", "adversarial")]


def _data(n: int = 32):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 8, 8, generator=g) * 2 - 1} for _ in range(n)]


def _recon_step(models, batch, ctx):
    "Deterministic one-phase objective: denoise a fixed corruption."
    x = batch["image"]
    yield "model", {"l2": F.mse_loss(models["model"](x.flip(-1)), x)}


class _TupleAE(nn.Module):
    "A deterministic 'VQ-style' autoencoder: returns (recon, regulariser)."
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 1, 3, padding=1))

    def forward(self, x):
        y = self.net(x)
        return y, 0.01 * y.pow(2).mean()


def _build(kind: str):
    torch.manual_seed(0)
    if kind == "one_phase":
        m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 1, 3, padding=1))
        return _recon_step, {"model": m}, {"model": torch.optim.SGD(m.parameters(), lr=0.1)}
    g, d = _TupleAE(), nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, padding=1))
    step = AutoencoderStep("ae", discriminator="d", adv_weight=0.5)
    return step, {"ae": g, "d": d}, {"ae": torch.optim.SGD(g.parameters(), lr=0.1), "d": torch.optim.SGD(d.parameters(), lr=0.1)}


def _train(kind: str, out: Path, batch_size: int, precision: str = "fp32"):
    step, models, opts = _build(kind)
    cfg = TrainConfig(max_steps=STEPS, batch_size=batch_size, progress=False, tensorboard=False, seed=3,
                      precision=precision)
    trainer = Trainer(step, models, opts, _data(), out / kind / precision, cfg)
    history = trainer.fit()
    return {n: {k: v.clone() for k, v in models[n].state_dict().items()} for n in opts}, history


def _worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    r, w, device = init_distributed("cpu")
    assert (r, w, device.type, dist.get_backend()) == (rank, world, "cpu", "gloo")
    try:
        results = {f"{k}/{p}": _train(k, Path(out) / "ddp", batch_size=4, precision=p) for k, p in RUNS}
        if rank == 0: torch.save(results, Path(out) / "ddp_results.pt")
    finally:
        dist.destroy_process_group()




@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # fork: the children inherit the imported torch/monai/medgen (spawn would re-import them, ~5 s each);
    # they use one intra-op thread and no data-loader workers, so forking after torch's import is safe.
    mp.start_processes(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method="fork")
    ddp = torch.load(out / "ddp_results.pt", weights_only=True)
    single = {f"{k}/{p}": _train(k, out / "single", batch_size=8, precision=p) for k, p in RUNS}
    return out, ddp, single


@pytest.mark.parametrize("kind,precision", RUNS)
def test_two_processes_equal_one_process(runs, kind, precision):
    out, ddp, single = runs
    (w2, h2), (w1, h1) = ddp[f"{kind}/{precision}"], single[f"{kind}/{precision}"]
    tol = TOL[precision]
    assert len(h2) == len(h1) == STEPS
    diff = max((w2[n][k] - w1[n][k]).abs().max().item() for n in w1 for k in w1[n])
    assert diff <= tol, f"{kind}, {precision}: 2-process weights differ from 1-process by {diff:.3g} > {tol}"
    for r2, r1 in zip(h2, h1):       # logged losses are averaged over ranks: the global batch's loss
        for term in r1:
            if term not in ("samples_per_s",): assert abs(r2[term] - r1[term]) <= tol, (kind, term, r2, r1)
    if precision == "bf16":  # it really ran in bf16 under DDP: its weights are not float32's
        w32 = ddp[f"{kind}/fp32"][0]
        assert max((w2[n][k] - w32[n][k]).abs().max().item() for n in w32 for k in w32[n]) > 1e-6
    # the weights moved (the comparison is not trivially true)
    step, models, _ = _build(kind)
    moved = max((w1[n][k] - v).abs().max().item() for n in w1 for k, v in models[n].state_dict().items())
    assert moved > 1e-3


def test_rank0_checkpoint_holds_every_rank_rng(runs):
    out, _, _ = runs
    state = load_checkpoint(out / "ddp" / "one_phase" / "fp32" / "checkpoints" / f"ckpt_{STEPS:08d}.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])  # ranks draw different noise
    assert (out / "ddp" / "one_phase" / "fp32" / "metrics.csv").read_text().count("\n") == STEPS + 1  # rank 0 logs, once

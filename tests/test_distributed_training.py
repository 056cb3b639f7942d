"""Data-parallel training (issue 26): two CPU processes with gloo give the weights of one process
with the same global batches (float64, to round-off); ``torchrun -m lib train`` trains and writes
one checkpoint; a killed rank ends the job with an error and leaves the last checkpoint intact."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lib

ROOT = Path(__file__).resolve().parents[1]


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 8, 8, generator=g, dtype=torch.float64)


def _trainer(checkpoint):
    from lib.diffusion import Trainer, default_model, make_sde

    torch.manual_seed(3)
    model = default_model(make_sde("ve", 25.0), (8, 8), channels=(4, 4, 4, 4), strides=(1, 2, 2, 2)).double()
    return Trainer(model, _data(), seed=5, checkpoint=checkpoint, device="cpu", epochs=2, batch_size=16,
                   z2_augment=True, grad_clip=1.0, ema_decay=0.9, dtype="float64")


def _rank(rank, world, init, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        t = _trainer(out)
        t.fit(progress_bar=False)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_train_the_weights_of_one_process(tmp_path):
    import torch.multiprocessing as mp

    one = _trainer(tmp_path / "one.pt")
    one.fit(progress_bar=False)
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", tmp_path / "two.pt"), nprocs=2, join=True)
    a = lib.diffusion.load_checkpoint(tmp_path / "one.pt")
    b = lib.diffusion.load_checkpoint(tmp_path / "two.pt")
    assert b["epoch"] == a["epoch"] == 2
    # float64 round-off (1e-16) grows through Adam's normalised steps to about 1e-10 after six steps; a
    # wrong slice, time or noise would move weights by the learning rate (1e-3)
    for key in ("model", "ema"):
        for name, v in a[key].items():
            assert torch.allclose(b[key][name], v, rtol=0, atol=1e-8), (key, name)
    np.testing.assert_allclose(b["history"], a["history"], rtol=1e-12)
    # the same generator state: a resumed two-rank run continues the one-process run
    assert torch.equal(b["generator"], a["generator"])


def _torchrun(*args, env):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-port", str(29500 + os.getpid() % 1000), "-m", "lib", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_torchrun_trains_and_a_killed_rank_leaves_the_last_checkpoint(tmp_path):
    env = dict(os.environ, DMSQ_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    ens = tmp_path / "ens.npz"
    r = subprocess.run([sys.executable, "-m", "lib", "hmc", "--L", "8", "--kappa", "0.2", "--lam", "0.02",
                        "--n-configs", "64", "--seed", "1", "--out", str(ens), "--n-burnin", "5", "--n-spacing",
                        "2", "--eps", "0.2", "--n-steps", "5", "--no-progress"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ok = _torchrun("train", str(ens), "--out", str(tmp_path / "m.pt"), "--seed", "0", "--epochs", "2",
                   "--channels", "4,4,4,4", "--batch-size", "16", "--no-progress", env=env)
    out, err = ok.communicate(timeout=300)
    assert ok.returncode == 0, err[-3000:]
    state = lib.diffusion.load_checkpoint(tmp_path / "m.pt")
    assert state["epoch"] == 2 and state["metadata"]["world_size"] == 2
    assert "on 2 ranks" in err
    # a long run; kill one rank after the first checkpoint: the job fails, the checkpoint stays readable
    long = _torchrun("train", str(ens), "--out", str(tmp_path / "k.pt"), "--seed", "0", "--epochs", "500",
                     "--channels", "4,4,4,4", "--batch-size", "16", "--no-progress", env=env)
    ck = tmp_path / "k.pt"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and long.poll() is None:
        time.sleep(0.2)
    assert ck.exists(), "no checkpoint within two minutes"
    children = subprocess.run(["pgrep", "-P", str(long.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2, children
    os.kill(int(children[-1]), signal.SIGKILL)
    out, err = long.communicate(timeout=120)
    assert long.returncode != 0
    assert "Signals.SIGKILL" in err or "SIGKILL" in err or "failed" in err.lower(), err[-2000:]
    state = lib.diffusion.load_checkpoint(ck)
    assert 1 <= state["epoch"] < 500
    # and the job resumes from it on two ranks
    again = _torchrun("train", str(ens), "--out", str(ck), "--seed", "0", "--epochs", str(state["epoch"] + 1),
                      "--channels", "4,4,4,4", "--batch-size", "16", "--no-progress", "--resume", env=env)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert lib.diffusion.load_checkpoint(ck)["epoch"] == state["epoch"] + 1

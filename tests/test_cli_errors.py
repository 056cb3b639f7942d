"""Hostile-but-fair inputs to the command line (``python -m lib ...``), table-driven.

Every row of :data:`CASES` must end with a non-zero exit status, exactly one line on stderr that
starts with ``error:`` (no traceback), no new file, and no change (bytes and mtime) to any file
that existed before — in particular no output or checkpoint lost to a refused run.

Speed: a fresh ``python -m lib`` spends about two CPU seconds importing torch, which over the
~140 runs below would exceed the time budget of this file. The runs therefore go through a
small fork server: one interpreter imports ``lib`` once, then forks a child per command, which runs
``lib/__main__.py`` exactly as ``python -m lib`` does, with its own stdout/stderr (at the file
descriptor level), working directory, exit status and a time limit. The server refuses to start
if importing ``lib`` writes anything on stderr (so that import-time warnings, which a fresh
process would print, are not hidden). Set ``CLI_ERRORS_FRESH=1`` to run every command in a
fresh ``subprocess.run([sys.executable, "-m", "lib", ...])`` instead. The malicious-file,
umask and acceptance checks always use fresh interpreters.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TIMEOUT = 120  # seconds per command; the refusals take well under one


def run_fresh(*args, cwd=ROOT, timeout=TIMEOUT, **kw):
    """``python -m lib ARGS`` in a new interpreter."""
    return subprocess.run([sys.executable, "-m", "lib", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=ENV, timeout=timeout, **kw)


# ------------------------------------------------------------------------------------------ fork server
_SERVER = r'''
import json, os, runpy, signal, sys, traceback
import lib, lib.cli, lib.diffusion.samplers  # the expensive imports, once
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the child: behave like a fresh `python -m lib ARGS`
        code = 1
        try:
            null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0)
            for fd, name in ((1, "stdout"), (2, "stderr")):
                f = os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600); os.dup2(f, fd); os.close(f)
            os.chdir(job["cwd"])
            signal.alarm(job["timeout"])
            sys.argv = [os.path.join(job["root"], "lib", "__main__.py"), *job["argv"]]
            try:
                runpy.run_module("lib", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr); code = 1
            except BaseException:
                traceback.print_exc(); code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n"); sys.stdout.flush()
'''


class ForkServer:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.err = workdir / "server.err"
        with open(self.err, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=ROOT, env=ENV, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=fh, text=True, bufsize=1)
        ready = self.proc.stdout.readline()
        startup = self.err.read_text()
        if ready.strip() != "ready" or startup:
            self.close()
            raise RuntimeError(f"fork server did not start cleanly: {ready!r} {startup!r}")
        self.n = 0

    def __call__(self, *args, cwd=ROOT, timeout=TIMEOUT):
        self.n += 1
        out, err = self.workdir / f"{self.n}.out", self.workdir / f"{self.n}.err"
        job = {"argv": [str(a) for a in args], "cwd": str(cwd), "timeout": int(timeout), "root": str(ROOT),
               "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"fork server died: {self.err.read_text()}")
        rc = json.loads(reply)["rc"]
        result = subprocess.CompletedProcess(list(args), rc, out.read_text(errors="replace"),
                                             err.read_text(errors="replace"))
        out.unlink()
        err.unlink()
        return result

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def cli():
    if os.environ.get("CLI_ERRORS_FRESH") or not hasattr(os, "fork"):
        yield run_fresh
        return
    with tempfile.TemporaryDirectory(prefix="cli-fork-") as d:
        server = ForkServer(Path(d))
        try:
            yield server
        finally:
            server.close()


# ------------------------------------------------------------------------------------------ fixtures
HMC_TINY = ["--L", "4", "--kappa", "0.21", "--lam", "0.022", "--n-configs", "8", "--seed", "0", "--eps", "0.1",
            "--n-steps", "5", "--n-burnin", "2", "--n-spacing", "1", "--no-progress"]
TRAIN_TINY = ["--epochs", "1", "--channels", "4,8,8,8", "--strides", "1,1,1,1", "--seed", "0", "--no-progress"]


def _with(base, **over):
    """``base`` (a flag list) with flags replaced or added: ``_with(HMC_TINY, eps="inf")``;
    a value None removes the flag, True adds a bare switch."""
    args = list(base)
    for name, value in over.items():
        flag = "--" + name.replace("_", "-")
        if flag in args:
            i = args.index(flag)
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            del args[i:i + 1 + has_value]
        if value is True:
            args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
    return args


@pytest.fixture(scope="module")
def shared(tmp_path_factory, cli):
    """A valid tiny ensemble (L = 4), a model trained on it (strides 1,1,1,1), and a U-Net with
    strides 1,2,2,2 trained on L = 8 (so it only takes L divisible by 8)."""
    d = tmp_path_factory.mktemp("shared")
    ens, ck = d / "ens.npz", d / "model.pt"
    ens8, ck8 = d / "ens8.npz", d / "model8.pt"
    for args in (["hmc", *HMC_TINY, "--out", ens],
                 ["hmc", *_with(HMC_TINY, L=8, kappa=0.2), "--out", ens8],
                 ["train", ens, "--out", ck, *TRAIN_TINY],
                 ["train", ens8, "--out", ck8, *_with(TRAIN_TINY, strides="1,2,2,2")]):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
    return {"ens": ens, "ck": ck, "ck8": ck8}


def _snapshot(*dirs) -> dict:
    snap = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file() or p.is_symlink():
                st = os.lstat(p)
                snap[str(p)] = (p.read_bytes() if p.is_file() else os.readlink(p), st.st_mtime_ns, st.st_mode)
    return snap


def check_one_line_error(r, *, warnings_allowed=False) -> str:
    assert r.returncode != 0, f"exit 0 for a refused input; stderr: {r.stderr!r}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    if warnings_allowed:
        lines = [ln for ln in lines if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ bad files
def _valid(shared):
    with np.load(shared["ens"]) as z:
        return z["configs"], json.loads(str(z["metadata"]))


def bad_npz(configs=None, meta=None, **meta_changes):
    """A setup that writes ``bad.npz``: the valid ensemble with its configurations and/or metadata
    replaced (``meta_changes`` update single metadata keys). Replaced configurations get their own
    checksum, so that the refusal tested is the one the case is about (an edited file whose checksum
    no longer matches is tested in tests/test_reliability.py)."""
    def setup(work, shared):
        c0, m0 = _valid(shared)
        c = c0 if configs is None else (configs(c0) if callable(configs) else configs)
        m = dict(m0) if meta is None else meta
        if meta is None:
            if configs is not None and "configs_sha256" in m:  # new numbers, written as such (not an edit)
                from lib.storage.files import array_hash

                a = np.asarray(c)
                if a.dtype.kind in "biuf":  # a checksum of real numbers; other dtypes are refused first
                    m["configs_sha256"] = array_hash(a)
                else:
                    del m["configs_sha256"]
            m.update(meta_changes)
        blob = m if isinstance(m, np.ndarray) else np.array(json.dumps(m))
        np.savez(work / "bad.npz", configs=c, metadata=blob)
    return setup


def write(name, data):
    def setup(work, shared):
        (work / name).write_bytes(data(work, shared) if callable(data) else data)
    return setup


def truncated(key, name):
    return write(name, lambda work, sh: sh[key].read_bytes()[: len(sh[key].read_bytes()) // 2])


def torch_save(name, obj):
    def setup(work, shared):
        import torch

        torch.save(obj(shared) if callable(obj) else obj, work / name)
    return setup


def _checkpoint_with(**changes):
    def make(shared):
        import torch

        state = torch.load(shared["ck"], weights_only=True)
        for k, v in changes.items():
            state[k] = v(state) if callable(v) else v
        return state
    return make


def _nan_weights(state):
    return {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()}


def _huge_unet(state):
    return {**state["model_config"], "channels": [100000] * 4}


def readonly_dir(work, shared):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):
        pytest.skip("running as a user (root?) for whom a 0500 directory stays writable")


def mkdir(name):
    def setup(work, shared):
        (work / name).mkdir()
    return setup


def copy(key, name):
    def setup(work, shared):
        shutil.copy2(shared[key], work / name)
    return setup


def several(*setups):
    def setup(work, shared):
        for s in setups:
            s(work, shared)
    return setup


# ------------------------------------------------------------------------------------------ the table
def C(id, *argv, setup=None, match=None, status=None):
    return pytest.param(list(argv), setup, match, status, id=id)


def hmc(**over):
    return ["hmc", *_with(HMC_TINY, **over), *([] if "out" in over else ["--out", "{w}/out.npz"])]


def obs(f, *more):
    return ["observables", f, *more]


def train(ens="{ens}", **over):
    return ["train", ens, *_with(TRAIN_TINY, **over), *([] if "out" in over else ["--out", "{w}/new.pt"])]


def sample(ck="{ck}", **over):
    base = ["--n", "2", "--seed", "0", "--steps", "10", "--no-progress"]
    return ["sample", ck, *_with(base, **over), *([] if "out" in over else ["--out", "{w}/gen.npz"])]


CASES = [
    # ---------------------------------------------------------------- hmc: numbers
    C("hmc-eps-inf", *hmc(eps="inf"), status=2, match="finite"),
    C("hmc-eps-nan", *hmc(eps="nan"), status=2, match="finite"),
    C("hmc-eps-negative", *hmc(eps="-1"), status=2, match="eps"),
    C("hmc-eps-zero", *hmc(eps="0"), status=2, match="eps"),
    C("hmc-n-steps-zero", *hmc(n_steps="0"), status=2),
    C("hmc-lam-nan", *hmc(lam="nan"), status=2),
    C("hmc-kappa-minus-inf", *hmc(kappa="-inf"), status=2, match="finite"),
    C("hmc-lam-negative-exponent", *hmc(lam="-2e-2"), match="lam"),
    C("hmc-kappa-negative", *hmc(kappa="-1")),
    C("hmc-free-field-unstable", *hmc(kappa="0.3", lam="0")),
    C("hmc-d-12", *hmc(d="12"), match="dimensions"),
    C("hmc-d-0", *hmc(d="0"), status=2),
    C("hmc-L-1", *hmc(L="1"), match="L must be"),
    C("hmc-L-0", *hmc(L="0"), status=2),
    C("hmc-L-huge", *hmc(L="100000"), match="GiB"),
    C("hmc-seed-above-2^63", *hmc(seed="100000000000000000000"), match="seed"),
    C("hmc-seed-2^63", *hmc(seed=str(2**63)), match="seed"),
    C("hmc-seed-power-notation", *hmc(seed="10^20"), status=2),
    C("hmc-seed-negative", *hmc(seed="-1"), status=2),
    C("hmc-seed-float", *hmc(seed="1.5"), status=2),
    C("hmc-n-configs-zero", *hmc(n_configs="0"), status=2),
    C("hmc-n-configs-10^12", *hmc(n_configs="1000000000000"), match="GiB"),
    C("hmc-n-configs-and-batch-10^12", *hmc(n_configs="1000000000000", batch_size="1000000000000"), match="GiB"),
    C("hmc-batch-size-zero", *hmc(batch_size="0"), status=2),
    C("hmc-per-chain-not-dividing", *hmc(per_chain="3"), match="multiple"),
    C("hmc-dtype-float16", *hmc(dtype="float16"), status=2),
    C("hmc-start-unknown", *hmc(start="warm"), status=2),
    C("hmc-unknown-flag", *hmc(frobnicate="1"), status=2),
    # ---------------------------------------------------------------- hmc: devices
    C("hmc-device-meta", *hmc(device="meta"), match="device"),
    C("hmc-device-cuda7", *hmc(device="cuda:7"), match="device"),
    C("hmc-device-nonsense", *hmc(device="gpu0"), match="device"),
    # ---------------------------------------------------------------- hmc: output paths
    C("hmc-out-is-directory", *hmc(out="{w}/dir.npz"), setup=mkdir("dir.npz"), match="directory"),
    C("hmc-out-missing-directory", *hmc(out="{w}/missing/out.npz"), match="does not exist"),
    C("hmc-out-readonly-directory", *hmc(out="{w}/ro/out.npz"), setup=readonly_dir, match="not writable"),
    C("hmc-out-wrong-suffix", *hmc(out="{w}/out.txt"), match=".npz"),
    C("hmc-out-exists", *hmc(out="{ens}"), match="exists"),
    C("hmc-out-exists-bad-eps", *hmc(out="{ens}", eps="-1"), "--force"),
    C("hmc-checkpoint-dir-is-file", *hmc(), "--checkpoint-dir", "{ens}", match="directory"),
    C("hmc-checkpoint-dir-garbage-chain", *hmc(), "--checkpoint-dir", "{w}/ckdir",
      setup=several(mkdir("ckdir"), write("ckdir/chains000000000-000000008.pt", b"garbage")), match="not a valid"),
    C("hmc-checkpoint-dir-foreign-chain", *hmc(), "--checkpoint-dir", "{w}/ckdir",
      setup=several(mkdir("ckdir"), copy("ck", "ckdir/chains000000000-000000008.pt")), match="checkpoint"),
    # ---------------------------------------------------------------- observables: bad files
    C("obs-missing-file", *obs("{w}/none.npz"), match="no such"),
    C("obs-directory", *obs("{w}"), match="directory"),
    C("obs-not-npz", *obs("{w}/bad.npz"), setup=write("bad.npz", b"hello, world\n"), match="not an ensemble"),
    C("obs-npy-file", *obs("{w}/bad.npy"), setup=lambda w, s: np.save(w / "bad.npy", np.zeros((4, 4, 4))),
      match="not an ensemble"),
    C("obs-npz-without-metadata", *obs("{w}/bad.npz"), setup=lambda w, s: np.savez(w / "bad.npz", configs=np.zeros(3)),
      match="not an ensemble"),
    C("obs-metadata-json-list", *obs("{w}/bad.npz"), setup=bad_npz(meta=np.array("[1,2]")), match="json object"),
    C("obs-metadata-not-json", *obs("{w}/bad.npz"), setup=bad_npz(meta=np.array("{not json")),
      match="not an ensemble"),
    C("obs-metadata-object-array", *obs("{w}/bad.npz"),
      setup=bad_npz(meta=np.array([{"format": "dmsq-ensemble-v2"}], dtype=object)), match="not an ensemble"),
    C("obs-metadata-without-format", *obs("{w}/bad.npz"), setup=bad_npz(format=None), match="format"),
    C("obs-configs-1d", *obs("{w}/bad.npz"), setup=bad_npz(configs=np.zeros(8), n_configs=8, shape=[]),
      match="shape"),
    C("obs-configs-strings", *obs("{w}/bad.npz"), setup=bad_npz(configs=np.array(["a", "b"])), match="float"),
    C("obs-configs-int", *obs("{w}/bad.npz"), setup=bad_npz(configs=lambda c: c.astype(np.int64)), match="float"),
    C("obs-configs-complex", *obs("{w}/bad.npz"), setup=bad_npz(configs=lambda c: c.astype(np.complex128)),
      match="float"),
    C("obs-zero-configs", *obs("{w}/bad.npz"), setup=bad_npz(configs=np.zeros((0, 4, 4)), n_configs=0),
      match="shape"),
    C("obs-one-config", *obs("{w}/bad.npz"), setup=bad_npz(configs=lambda c: c[:1], n_configs=1), match="at least 2"),
    C("obs-nan-configs", *obs("{w}/bad.npz"), setup=bad_npz(configs=lambda c: np.where(c > 0, np.nan, c)),
      match="not finite"),
    C("obs-n-configs-too-large", *obs("{w}/bad.npz"), setup=bad_npz(n_configs=100), match="metadata says"),
    C("obs-n-configs-string", *obs("{w}/bad.npz"), setup=bad_npz(n_configs="8"), match="metadata"),
    C("obs-shape-disagrees", *obs("{w}/bad.npz"), setup=bad_npz(shape=[8, 8]), match="metadata says"),
    C("obs-theory-L-8-array-4x4", *obs("{w}/bad.npz"), match="L = 8",
      setup=bad_npz(theory={"name": "phi4", "L": 8, "kappa": 0.2, "lam": 0.02, "d": 2})),
    C("obs-theory-d-string", *obs("{w}/bad.npz"), match="theory",
      setup=bad_npz(theory={"name": "phi4", "L": 4, "kappa": 0.2, "lam": 0.02, "d": "2"})),
    C("obs-theory-d-huge", *obs("{w}/bad.npz"), match="theory",
      setup=bad_npz(theory={"name": "phi4", "L": 4, "kappa": 0.2, "lam": 0.02, "d": 10**12})),
    C("obs-truncated-ensemble", *obs("{w}/bad.npz"), setup=truncated("ens", "bad.npz"), match="not an ensemble"),
    C("obs-n-blocks-1", *obs("{ens}", "--n-blocks", "1"), status=2),
    C("obs-n-blocks-too-many", *obs("{ens}", "--n-blocks", "9"), match="n-blocks"),
    # ---------------------------------------------------------------- train
    C("train-lr-0", *train(lr="0"), status=2, match="--lr"),
    C("train-lr-inf", *train(lr="inf"), status=2, match="finite"),
    C("train-lr-negative", *train(lr="-1e-3"), status=2, match="--lr must be"),
    C("train-lr-before-ensemble", *train(ens="{w}/none.npz", lr="0"), status=2, match="--lr"),
    C("train-sigma-inf", *train(sigma="inf"), status=2, match="finite"),
    C("train-sigma-0.5", *train(sigma="0.5"), match="sigma"),
    C("train-sigma-1", *train(sigma="1"), match="sigma"),
    C("train-epochs-0", *train(epochs="0"), status=2),
    C("train-batch-size-0", *train(batch_size="0"), status=2),
    C("train-ema-1.5", *train(ema="1.5"), status=2, match="--ema"),
    C("train-grad-clip-negative", *train(grad_clip="-1"), status=2, match="--grad-clip"),
    C("train-zero-mode-weight-0", *train(zero_mode_weight="0"), status=2, match="--zero-mode-weight"),
    C("train-zero-mode-sd-negative", *train(zero_mode_sd="-1", zero_mode_head=True), match="zero-mode-sd"),
    C("train-channels-two", *train(channels="4,8"), match="--channels"),
    C("train-channels-not-numbers", *train(channels="a,b,c,d"), match="--channels"),
    C("train-channels-zero", *train(channels="0,8,8,8"), match="--channels"),
    C("train-channels-huge", *train(channels="100000,100000,100000,100000"), match="--channels"),
    C("train-strides-3", *train(strides="1,3,1,1"), match="--strides"),
    C("train-hidden-negative", *train(hidden="-5,4"), status=2, match="--hidden must be"),
    C("train-n-train-too-many", *train(n_train="1000"), match="--n-train"),
    C("train-device-meta", *train(device="meta"), match="device"),
    C("train-out-wrong-suffix", *train(out="{w}/model.npz"), match=".pt"),
    C("train-resume-missing", *train(resume=True), match="does not exist"),
    C("train-resume-and-force", *train(out="{ck}", resume=True, force=True), match="exclude"),
    C("train-resume-garbage", *train(out="{w}/g.pt", resume=True), setup=write("g.pt", b"garbage"),
      match="not a valid"),
    C("train-resume-other-settings", *train(out="{ck}", resume=True, seed="5"), match="other settings"),
    C("train-out-exists", *train(out="{ck}"), match="exists"),
    # the data-loss cases: a refused --force run must leave the existing checkpoint alone
    C("train-force-bad-ensemble", *train(ens="{w}/bad.npz", out="{ck}", force=True),
      setup=write("bad.npz", b"not an ensemble"), match="not an ensemble"),
    C("train-force-truncated-ensemble", *train(ens="{w}/bad.npz", out="{ck}", force=True),
      setup=truncated("ens", "bad.npz"), match="not an ensemble"),
    C("train-force-lr-0", *train(out="{ck}", lr="0", force=True), status=2, match="--lr"),
    C("train-force-sigma-0.5", *train(out="{ck}", sigma="0.5", force=True), match="sigma"),
    C("train-force-channels-two", *train(out="{ck}", channels="4,8", force=True), match="--channels"),
    C("train-force-device-meta", *train(out="{ck}", device="meta", force=True), match="device"),
    C("train-force-bad-strides", *train(out="{ck}", strides="1,2,2,2", force=True), match="divisible"),
    C("train-inf-ensemble", *train(ens="{w}/bad.npz"), setup=bad_npz(configs=lambda c: np.where(c > 0, np.inf, c)),
      match="not finite"),
    C("train-missing-ensemble", *train(ens="{w}/none.npz"), match="no such"),
    C("train-z2-minmax", *train(normalise="minmax", z2_augment=True), match="symmetric"),
    # ---------------------------------------------------------------- sample
    C("sample-format-only-checkpoint", *sample("{w}/f.pt"), setup=torch_save("f.pt", {"format": "dmsq-checkpoint-v2"}),
      match="incomplete"),
    C("sample-empty-dict-checkpoint", *sample("{w}/f.pt"), setup=torch_save("f.pt", {}), match="checkpoint"),
    C("sample-list-checkpoint", *sample("{w}/f.pt"), setup=torch_save("f.pt", [1, 2, 3]), match="checkpoint"),
    C("sample-truncated-checkpoint", *sample("{w}/t.pt"), setup=truncated("ck", "t.pt"), match="truncated"),
    C("sample-text-file", *sample("{w}/x.pt"), setup=write("x.pt", b"hello\n"), match="cannot be read"),
    C("sample-ensemble-as-checkpoint", *sample("{ens}"), match="not a valid"),
    C("sample-pickle-garbage", *sample("{w}/p.pt"), setup=write("p.pt", b"\x80\x02garbage"), match="not a valid"),
    C("sample-missing-checkpoint", *sample("{w}/none.pt"), match="no such"),
    C("sample-nan-weights", *sample("{w}/n.pt"), setup=torch_save("n.pt", _checkpoint_with(model=_nan_weights,
                                                                                            ema=None)),
      match="nan"),
    C("sample-bogus-model-config", *sample("{w}/b.pt"),
      setup=torch_save("b.pt", _checkpoint_with(model_config={"kind": "bogus", "sde": {"name": "ve"}})),
      match="model"),
    C("sample-huge-model-config", *sample("{w}/h.pt"), setup=torch_save("h.pt", _checkpoint_with(
        model_config=_huge_unet)), match="checkpoint"),
    C("sample-eps-2", *sample(eps="2"), status=2, match="--eps"),
    C("sample-eps-0", *sample(eps="0"), status=2, match="--eps"),
    C("sample-steps-1", *sample(steps="1"), status=2, match="--steps"),
    C("sample-steps-0", *sample(steps="0"), status=2),
    C("sample-rtol-0", *sample(sampler="ode", rtol="0"), status=2, match="--rtol"),
    C("sample-sampler-unknown", *sample(sampler="magic"), status=2),
    C("sample-device-meta", *sample(device="meta"), match="device"),
    C("sample-device-cuda7", *sample(device="cuda:7"), match="device"),
    C("sample-L-3-strides-1222", *sample("{ck8}", L="3"), match="divisible"),
    C("sample-L-0", *sample(L="0"), status=2),
    C("sample-L-huge", *sample(L="100000"), match="GiB"),
    C("sample-n-0", *sample(n="0"), status=2),
    C("sample-n-10^12", *sample(n="1000000000000"), match="GiB"),
    C("sample-seed-negative", *sample(seed="-1"), status=2),
    C("sample-seed-above-2^63", *sample(seed=str(2**64)), match="seed"),
    C("sample-batch-size-0", *sample(batch_size="0"), status=2),
    C("sample-out-exists", *sample(out="{ens}"), match="exists"),
    C("sample-out-wrong-suffix", *sample(out="{w}/gen.pt"), match=".npz"),
    C("sample-out-missing-dir", *sample(out="{w}/missing/gen.npz"), match="does not exist"),
    # ---------------------------------------------------------------- usage
    C("no-command"),
    C("unknown-command", "frobnicate", status=2),
    C("hmc-missing-required", "hmc", "--L", "4", status=2),
]


def _prepare(argv, setup, work, shared):
    """Copy the shared files an argument names into ``work`` and substitute the placeholders."""
    names = {"w": str(work)}
    for key, src in shared.items():
        if any("{" + key + "}" in a for a in argv):
            dst = work / src.name
            shutil.copy2(src, dst)
            times = Path(str(src) + ".times.json")
            if times.exists():
                shutil.copy2(times, Path(str(dst) + ".times.json"))
            names[key] = str(dst)
    if setup is not None:
        setup(work, shared)
    return [a.format(**names) for a in argv]


@pytest.mark.parametrize("argv, setup, match, status", CASES)
def test_refused_in_one_line(cli, shared, tmp_path, argv, setup, match, status):
    work = tmp_path / "work"
    work.mkdir()
    args = _prepare(argv, setup, work, shared)
    before = _snapshot(work, shared["ens"].parent)
    t0 = time.perf_counter()
    try:
        r = cli(*args, cwd=work)
    finally:
        for p in work.rglob("*"):  # let pytest clean up a read-only directory
            if p.is_dir():
                p.chmod(0o700)
    seconds = time.perf_counter() - t0
    line = check_one_line_error(r)
    print(r.returncode, line)
    if status is not None:
        assert r.returncode == status, (r.returncode, line)
    if match is not None:
        assert match.lower() in line.lower(), line
    after = _snapshot(work, shared["ens"].parent)
    assert sorted(set(after) - set(before)) == [], "files were created by a refused run"
    assert sorted(set(before) - set(after)) == [], "files were deleted by a refused run"
    changed = [p for p in before if before[p] != after[p]]
    assert changed == [], f"files were changed by a refused run: {changed}"
    assert r.stdout == "", r.stdout
    assert seconds < 30, f"the refusal took {seconds:.1f} s (should come before any computation)"


# ------------------------------------------------------------------------------------------ malicious pickles
class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, ("touch " + self.marker,)


def test_malicious_pickles_never_run(shared, tmp_path):
    """A checkpoint whose pickle would run code (here: touch a marker file) is refused in one line
    wherever the library reads one: ``sample``, ``train --resume``, an HMC chain checkpoint and
    the model cache (which scans ``dm-*.pt`` for shorter runs), and in an ensemble's entries."""
    import torch

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "dmsq-checkpoint-v2", "payload": _Evil(marker)}, evil)
    # the file really is an exploit: an unsafe load would run it
    probe = tmp_path / "probe"
    probe_file = tmp_path / "probe.pt"
    torch.save(_Evil(probe), probe_file)
    torch.load(probe_file, weights_only=False)
    assert probe.exists()

    ens = tmp_path / "ens.npz"
    shutil.copy2(shared["ens"], ens)
    ckdir = tmp_path / "chains"
    ckdir.mkdir()
    shutil.copy2(evil, ckdir / "chains000000000-000000008.pt")  # the name hmc_ensemble gives batch 0 of 8 chains
    evil_npz = tmp_path / "evil.npz"
    c, m = _valid(shared)
    np.savez(evil_npz, configs=c, metadata=np.array([_Evil(marker)], dtype=object))
    evil_cfg = tmp_path / "evilcfg.npz"
    np.savez(evil_cfg, configs=np.array([_Evil(marker)], dtype=object), metadata=np.array(json.dumps(m)))

    before = _snapshot(tmp_path)
    runs = {
        "sample": run_fresh("sample", evil, "--n", 2, "--out", tmp_path / "g.npz", "--seed", 0, "--no-progress"),
        "train --resume": run_fresh("train", ens, "--out", evil, "--resume", *TRAIN_TINY),
        "hmc --checkpoint-dir": run_fresh("hmc", *HMC_TINY, "--out", tmp_path / "h.npz", "--checkpoint-dir", ckdir),
        "observables (pickled metadata)": run_fresh("observables", evil_npz),
        "train (pickled configurations)": run_fresh("train", evil_cfg, "--out", tmp_path / "m.pt", *TRAIN_TINY),
    }
    for what, r in runs.items():
        line = check_one_line_error(r)
        assert not marker.exists(), f"{what} ran the pickled code"
        assert ("not a valid" in line or "not an ensemble" in line), (what, line)
        if what != "observables (pickled metadata)" and "configurations" not in what:
            assert "system" in line and "nothing in it was run" in line, (what, line)
    assert _snapshot(tmp_path) == before

    # the model cache: a planted dm-*.pt is skipped (never unpickled unsafely) when looking for shorter runs
    from lib.diffusion import TrainSettings, cached_score_model, default_model, make_sde
    from lib.storage import load_ensemble

    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(evil, cache / "dm-0000000000000000.pt")
    e = load_ensemble(shared["ens"])
    model = default_model(make_sde("ve", 25.0), e.configs.shape[1:], channels=(4, 8, 8, 8), strides=(1, 1, 1, 1))
    settings = TrainSettings(epochs=1, batch_size=8)
    _, state, path = cached_score_model(e, model, settings, seed=0, cache_dir=cache, device="cpu",
                                        progress_bar=False, verbose=False)
    assert not marker.exists(), "the model cache ran a planted pickle"
    assert path.exists() and path.name != "dm-0000000000000000.pt" and state["epoch"] == 1
    assert (cache / "dm-0000000000000000.pt").read_bytes() == evil.read_bytes()


# ------------------------------------------------------------------------------------------ file modes
def test_outputs_are_0600_whatever_the_umask(tmp_path):
    """Written files are private (0600) even with umask 0; an absurd --batch-size is clamped to
    the number of chains (not an error)."""
    out = tmp_path / "u.npz"
    r = run_fresh("hmc", *HMC_TINY, "--out", out, "--batch-size", "1000000000000", preexec_fn=lambda: os.umask(0))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    ck = tmp_path / "u.pt"
    r = run_fresh("train", out, "--out", ck, *TRAIN_TINY, preexec_fn=lambda: os.umask(0))
    assert r.returncode == 0, r.stderr
    for p in (ck, Path(str(ck) + ".times.json")):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.npz", "u.pt", "u.pt.times.json"]  # no temporaries left


# ------------------------------------------------------------------------------------------ frozen chains
def test_acceptance_near_zero_warns_but_writes(tmp_path):
    out = tmp_path / "frozen.npz"
    r = run_fresh("hmc", *_with(HMC_TINY, kappa=50), "--out", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    warns = [ln for ln in lines if ln.startswith("warning:")]
    assert warns and any("acceptance" in ln for ln in warns), r.stderr
    assert all(ln.startswith(("warning:", "wrote ")) for ln in lines), r.stderr
    from lib.storage import load_ensemble

    ens = load_ensemble(out)
    assert "acceptance" in ens.metadata and ens.metadata["acceptance"] < 0.01


# ------------------------------------------------------------------------------------------ seeds
def test_two_seeds_never_share_a_configuration(cli, tmp_path):
    from lib.storage import load_ensemble

    outs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}.npz"
        r = cli("hmc", *_with(HMC_TINY, seed=seed, n_configs=16, batch_size=8), "--out", out)
        assert r.returncode == 0, r.stderr
        outs.append(load_ensemble(out).configs)
    a, b = outs
    assert a.shape == b.shape == (16, 4, 4)
    assert len({x.tobytes() for x in a}) == 16 and len({x.tobytes() for x in b}) == 16
    assert not ({x.tobytes() for x in a} & {x.tobytes() for x in b})
    assert not any(np.array_equal(x, y) for x in a for y in b)

"""The study object (lib.study) and the trained models that ship with the book (lib.diffusion.shipped,
models/manifest.json): the study builds the same cache requests as the chapters' explicit calls, a
shipped model is found by the cache instead of training and samples exactly as the checkpoint it was
exported from, a tampered file is refused in one line, and every entry of the repository's manifest
loads, matches its hash and carries the training request its key names."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lib
from lib.diffusion import TrainSettings, cached_dm_ensemble, default_model, make_sde, shipped
from lib.storage.files import content_hash
from lib.study import PAPER_STUDIES, Phi4Study

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(L=8, kappa=0.21, n_train=48, n_test=16, n_burnin=5, n_spacing=2, channels=(4, 4, 8, 8), strides=(1, 2, 1, 1),
            epochs=2, batch_size=16)


@pytest.fixture()
def tiny_study_dirs(tmp_path, monkeypatch):
    cache, models = tmp_path / "cache", tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("DMSQ_CACHE", str(cache))
    monkeypatch.setenv("DMSQ_MODELS", str(models))
    return cache, models


def test_study_builds_the_requests_the_chapters_built_by_hand(tiny_study_dirs):
    """The keys of cached models must not change when the chapters move to the study object: the
    study's request equals the one of the explicit calls chapters 6 and 7 made (hot and ordered
    starts, with and without the zero-mode head)."""
    for study in (Phi4Study(**TINY), Phi4Study(**{**TINY, "kappa": 0.5}, start="ordered", zero_mode_head=True)):
        theory = lib.Phi4(L=study.L, kappa=study.kappa, lam=study.lam)
        hmc = dict(n_burnin=study.n_burnin, n_spacing=study.n_spacing, eps=0.1, n_steps=10, progress_bar=False)
        if study.start == "ordered":
            hmc["start"] = "ordered"
        ens = lib.cached_hmc_ensemble(theory, study.n_train + study.n_test, seed=2024, verbose=False, **hmc)
        extra = dict(zero_mode_head=True) if study.zero_mode_head else {}
        net = default_model(make_sde("ve", 25.0), (8, 8), channels=[4, 4, 8, 8], strides=[1, 2, 1, 1], **extra)
        by_hand = lib.diffusion.score_model_request(
            ens, net, TrainSettings(epochs=2, batch_size=16, lr=1e-3, ema_decay=0.999, normalisation="minmax"),
            n_train=study.n_train, seed=1)
        assert study.model_request() == by_hand
        assert study.cache_key() == content_hash(by_hand)
    # App. C's training-set sizes and the symmetry variants of chapter 7: a subset of the same
    # ensemble, an odd network or Z2 augmentation, with the max-abs normalisation
    ens = Phi4Study(**TINY).ensemble(verbose=False)
    for changes, net_kw, train_kw, n in (({"n_fit": 32}, {}, {}, 32),
                                         ({"odd": True, "normalisation": "maxabs"}, {"odd": True},
                                          {"normalisation": "maxabs"}, 48),
                                         ({"z2_augment": True, "normalisation": "maxabs"}, {},
                                          {"normalisation": "maxabs", "z2_augment": True}, 48)):
        net = default_model(make_sde("ve", 25.0), (8, 8), channels=[4, 4, 8, 8], strides=[1, 2, 1, 1], **net_kw)
        settings = TrainSettings(**{**dict(epochs=2, batch_size=16, ema_decay=0.999, normalisation="minmax"),
                                    **train_kw})
        by_hand = lib.diffusion.score_model_request(ens, net, settings, n_train=n, seed=1)
        assert Phi4Study(**TINY, **changes).model_request() == by_hand
    with pytest.raises(ValueError, match="n_fit"):
        Phi4Study(**TINY, n_fit=49)


def test_a_shipped_model_replaces_training_and_samples_exactly_as_its_checkpoint(tiny_study_dirs):
    cache, models = tiny_study_dirs
    study = Phi4Study(**TINY)
    _, state, ckpt = study.model(progress_bar=False, verbose=False)
    assert ckpt.parent == cache and state["epoch"] == 2
    before = cached_dm_ensemble(ckpt, 8, seed=3, n_steps=20, progress_bar=False, verbose=False).configs
    entry = shipped.ship(ckpt, "tiny", models, chapter="test")
    assert entry["cache_key"] == study.cache_key() == ckpt.stem.removeprefix("dm-")
    assert entry["L"] == 8 and entry["kappa"] == 0.21 and entry["channels"] == [4, 4, 8, 8] and entry["epochs"] == 2
    seconds = state["epoch_seconds"]
    assert entry["train_seconds"] == pytest.approx(sum(seconds), abs=0.1)
    assert entry["median_epoch_seconds"] == pytest.approx(float(np.median(seconds)), abs=0.01)
    raw = torch.load(models / "tiny.pt", weights_only=True)
    assert raw["optimizer"] is None and raw["model"] is None and raw["ema"] is not None  # only what sampling needs
    assert os.path.getsize(models / "tiny.pt") < os.path.getsize(ckpt)
    # a fresh cache: the request is answered by models/, nothing is trained, and generation is bitwise the same
    fresh = cache.parent / "fresh"
    os.environ["DMSQ_CACHE"] = str(fresh)
    _, state2, ckpt2 = study.model(progress_bar=False, verbose=False)
    assert ckpt2 == models / "tiny.pt" and not list(fresh.glob("dm-*.pt"))
    assert state2["history"] == state["history"] and len(state2["epoch_seconds"]) == 2
    after = cached_dm_ensemble(ckpt2, 8, seed=3, n_steps=20, progress_bar=False, verbose=False)
    assert torch.equal(torch.as_tensor(after.configs), torch.as_tensor(before))
    # ... under the same request, so derived results are shared with a locally trained copy
    assert after.metadata["model"] == cached_dm_ensemble(ckpt, 8, seed=3, n_steps=20, progress_bar=False,
                                                         verbose=False).metadata["model"]
    assert shipped.check_entry(entry, models)["epoch"] == 2
    with pytest.raises(ValueError, match="shipped model.*ema=True"):
        lib.diffusion.load_model(ckpt2, ema=False)


def test_a_tampered_shipped_model_is_refused_in_one_line(tiny_study_dirs):
    cache, models = tiny_study_dirs
    study = Phi4Study(**TINY)
    shipped.ship(study.checkpoint(), "tiny", models)
    data = bytearray((models / "tiny.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (models / "tiny.pt").write_bytes(bytes(data))
    shutil.rmtree(cache)  # nothing cached: the lookup must go to models/
    with pytest.raises(ValueError) as exc:
        study.model(progress_bar=False, verbose=False)
    assert "does not match its SHA-256" in str(exc.value) and "\n" not in str(exc.value)
    r = subprocess.run([sys.executable, "-m", "lib", "paper-model", "--check", "--models", str(models)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "SHA-256" in r.stderr
    # an entry pointing outside the directory, or a manifest that is not a list, is refused as well
    (models / "manifest.json").write_text(json.dumps([{**{k: 0 for k in shipped.REQUIRED}, "file": "../x.pt",
                                                          "cache_key": "k"}]))
    with pytest.raises(ValueError, match="inside"):
        shipped.shipped_checkpoint("k", models)
    (models / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="list"):
        shipped.read_manifest(models)


def test_the_repository_ships_its_paper_scale_models():
    """Every entry of models/manifest.json loads, matches its hash, carries the request its cache key
    names and the settings of the paper study it is named after; all of them fit the 40 MB budget."""
    directory = ROOT / "models"
    entries = shipped.read_manifest(directory)
    assert entries, "models/manifest.json lists no model"
    total = 0
    for e in entries:
        state = shipped.check_entry(e, directory)
        name = Path(e["file"]).stem
        assert name in PAPER_STUDIES, f"{name} is not a paper study"
        study = PAPER_STUDIES[name][1]
        assert Phi4Study.from_dict(e["study"]) == study
        request = state["metadata"]["request"]
        kw = study.train_settings()
        assert request["n_train"] == kw.pop("n_train") and request["seed"] == kw.pop("seed")
        kw.pop("n_validation")
        assert request["settings"] == TrainSettings.build(**kw).key()
        assert request["theory"] == lib.Phi4(L=study.L, kappa=study.kappa, lam=study.lam).to_dict()
        assert state["model_config"]["channels"] == list(study.channels)
        assert bool(state["model_config"].get("zero_mode_head")) == study.zero_mode_head
        total += (directory / e["file"]).stat().st_size
    assert total < 40e6, f"shipped models take {total / 1e6:.1f} MB"

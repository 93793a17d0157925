"""`stsae train`: the grid, --only filters, contract-conforming files, and skipping finished models."""

from __future__ import annotations

import json

import pytest

from stsae.errors import StsaeError
from stsae.models.stsae import STSAE
from stsae.stages.train import run
from stsae.train.grid import GridEntry, build_grid, select
from train_runs import config, ctx, embeddings_run_dir

CONTRACT_KEYS = {"variant", "d_dict", "seed", "activation", "k", "steps", "complete", "train_config",
                 "metrics", "input_mean_norm_over_std", "effective_rank"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grid_has_main_variants_for_every_seed_and_sweep_for_first_seed_without_duplicates():
    grid = build_grid(config().train)
    assert grid == [GridEntry("full", 16, 0), GridEntry("vanilla", 16, 0), GridEntry("full", 16, 1),
                    GridEntry("vanilla", 16, 1), GridEntry("full", 8, 0)]


def test_only_filters_combine_kinds_with_and_and_values_with_or():
    grid = build_grid(config().train)
    assert select(grid, ["full", "K=8"]) == [GridEntry("full", 8, 0)]
    assert select(grid, ["vanilla", "seed=1"]) == [GridEntry("vanilla", 16, 1)]
    assert len(select(grid, ["seed=0", "seed=1", "K=16"])) == 4


def test_only_refuses_unknown_token_naming_the_choices():
    with pytest.raises(StsaeError, match="no_smooth"):
        select(build_grid(config().train), ["smooth"])


def test_only_refuses_a_filter_that_matches_nothing():
    with pytest.raises(StsaeError, match="K=4096"):
        select(build_grid(config().train), ["K=4096"])


def test_stage_writes_every_grid_model_with_contract_sidecar(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()))
    for entry in build_grid(config().train):
        path = run_dir.stsae_checkpoint(entry.variant, entry.d_dict, entry.seed)
        info = json.loads(path.with_suffix(".json").read_text())
        assert info.keys() >= CONTRACT_KEYS and info["complete"] is True
        assert (info["variant"], info["d_dict"], info["seed"]) == (entry.variant, entry.d_dict, entry.seed)
        assert STSAE.load(path).W_dec.shape == (entry.d_dict, 512)
    assert not (run_dir.models_dir / "checkpoints").exists()


def test_stage_skips_finished_models_and_retrains_changed_settings(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["full", "K=8"])
    path = run_dir.stsae_checkpoint("full", 8, 0)
    first = path.stat().st_mtime_ns
    run(ctx(run_dir, config()), only=["full", "K=8"])
    assert path.stat().st_mtime_ns == first
    run(ctx(run_dir, config(steps=5)), only=["full", "K=8"])
    assert path.stat().st_mtime_ns != first


def test_stage_only_trains_the_selected_subset(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["vanilla", "seed=1"])
    written = sorted(p.name for p in run_dir.models_dir.glob("*.safetensors"))
    assert written == ["stsae-vanilla-K16-s1.safetensors"]


def test_stage_records_input_statistics_in_the_manifest(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["full", "K=8"])
    facts = json.loads(run_dir.manifest.read_text())["train"]
    assert facts["models_trained"] == ["stsae-full-K8-s0"]
    assert facts["input_mean_norm_over_std"] > 0 and facts["effective_rank"] > 1


def test_models_trained_on_other_embeddings_are_retrained_not_skipped(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["full", "K=8"])
    path = run_dir.stsae_checkpoint("full", 8, 0)
    first = path.stat().st_mtime_ns
    run(ctx(run_dir, config(), embeddings="emb-B"), only=["full", "K=8"])
    assert path.stat().st_mtime_ns != first
    assert json.loads(path.with_suffix(".json").read_text())["embeddings"] == "emb-B"


def test_models_trained_by_other_code_are_retrained_not_skipped(tmp_path, monkeypatch):
    """An edit of the training code reruns the stage (its fingerprint holds the code digest); the
    per-model check must then retrain the models the old code made, not keep them as finished."""
    from stsae.train import grid

    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["full", "K=8"])
    path = run_dir.stsae_checkpoint("full", 8, 0)
    first = path.stat().st_mtime_ns
    assert json.loads(path.with_suffix(".json").read_text())["code"] == grid.training_code()
    run(ctx(run_dir, config()), only=["full", "K=8"])
    assert path.stat().st_mtime_ns == first
    monkeypatch.setattr(grid, "training_code", lambda: "edited")
    run(ctx(run_dir, config()), only=["full", "K=8"])
    assert path.stat().st_mtime_ns != first
    assert json.loads(path.with_suffix(".json").read_text())["code"] == "edited"


def test_models_outside_the_current_grid_or_embeddings_are_moved_to_stale(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["full", "K=8"])
    run(ctx(run_dir, config()), only=["vanilla", "seed=1"])
    run(ctx(run_dir, config(d_dict_sweep=[16]), embeddings="emb-B"), only=["vanilla", "seed=1"])
    kept = sorted(p.name for p in run_dir.models_dir.glob("stsae-*"))
    stale = sorted(p.name for p in run_dir.stale_models_dir.glob("stsae-*"))
    assert kept == ["stsae-vanilla-K16-s1.json", "stsae-vanilla-K16-s1.safetensors"]
    assert stale == ["stsae-full-K8-s0.json", "stsae-full-K8-s0.safetensors",
                     "stsae-vanilla-K16-s1.json", "stsae-vanilla-K16-s1.safetensors"]
    assert json.loads(run_dir.manifest.read_text())["train"]["models_set_aside"] == [
        "stsae-full-K8-s0", "stsae-vanilla-K16-s1"]


def test_stage_records_the_main_model_of_the_grid(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["full", "K=8"])
    assert json.loads(run_dir.manifest.read_text())["train"]["main_model"] == "stsae-full-K16-s0"


def test_a_grid_model_whose_save_was_cut_short_is_retrained_in_place_not_set_aside(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["full", "K=8"])
    path = run_dir.stsae_checkpoint("full", 8, 0)
    path.with_suffix(".json").unlink()
    run(ctx(run_dir, config()), only=["full", "K=8"])
    assert path.with_suffix(".json").is_file() and not run_dir.stale_models_dir.exists()


def test_a_model_file_damaged_after_training_is_retrained_not_kept(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["full", "K=8"])
    path = run_dir.stsae_checkpoint("full", 8, 0)
    good = path.read_bytes()
    path.write_bytes(good[:-8] + bytes(8))
    run(ctx(run_dir, config()), only=["full", "K=8"])
    assert path.read_bytes() == good


def test_fused_and_one_by_one_training_write_byte_identical_models(tmp_path):
    """train.fused_grid only schedules: each model of a fused group gets exactly its lone weights."""
    fused, single = embeddings_run_dir(tmp_path / "fused"), embeddings_run_dir(tmp_path / "single")
    run(ctx(fused, config(fused_grid=True)))
    run(ctx(single, config(fused_grid=False)))
    facts = json.loads(fused.manifest.read_text())["train"]
    assert facts["fused_groups"] == [2, 2, 1]  # full (three parts) and vanilla (z_t only) apart
    assert json.loads(single.manifest.read_text())["train"]["fused_groups"] == [1] * 5
    for entry in build_grid(config().train):
        a, b = (d.stsae_checkpoint(entry.variant, entry.d_dict, entry.seed) for d in (fused, single))
        assert a.read_bytes() == b.read_bytes(), a.name


def test_switching_fused_grid_retrains_nothing(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["K=8"])
    run(ctx(run_dir, config(fused_grid=False)), only=["K=8"])
    assert json.loads(run_dir.manifest.read_text())["train"]["models_skipped"] == ["stsae-full-K8-s0"]


def test_a_group_only_trains_its_unfinished_members(tmp_path):
    run_dir = embeddings_run_dir(tmp_path)
    run(ctx(run_dir, config()), only=["vanilla", "K=16"])
    run(ctx(run_dir, config()), only=["K=16"])
    facts = json.loads(run_dir.manifest.read_text())["train"]
    assert facts["fused_groups"] == [2]
    assert sorted(facts["models_skipped"]) == ["stsae-vanilla-K16-s0", "stsae-vanilla-K16-s1"]


def test_fused_groups_split_large_dictionaries_by_their_latent_budget(monkeypatch):
    from stsae.stages import train as train_stage

    monkeypatch.setattr(train_stage, "FUSED_LATENTS", 32)
    entries = [GridEntry("full", 16, 0), GridEntry("full", 16, 1), GridEntry("full", 16, 2),
               GridEntry("full", 8, 0), GridEntry("full", 64, 0)]
    groups = train_stage._groups(entries, config().train)
    assert groups == [entries[:2], [entries[2]], [entries[3]], [entries[4]]]
    assert train_stage._groups(entries, config(fused_grid=False).train) == [[e] for e in entries]


def test_only_models_reading_the_same_triplet_parts_are_fused():
    """A group encodes every part any member reads, so vanilla (z_t) and no_smooth (z_t, z_aug_t) train
    apart from full (z_t, z_t+1, z_aug_t) rather than paying for its encodes."""
    from stsae.stages import train as train_stage

    full, vanilla, no_smooth, no_div = (GridEntry(v, 16, 0) for v in ("full", "vanilla", "no_smooth", "no_div"))
    groups = train_stage._groups([full, vanilla, no_smooth, no_div, GridEntry("vanilla", 16, 1)], config().train)
    assert groups == [[full, no_div], [vanilla, GridEntry("vanilla", 16, 1)], [no_smooth]]

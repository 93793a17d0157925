"""Stage contracts: each stage sees only the config keys it declares, and the declaration is checked."""

import pytest

from stsae.config import load_config
from stsae.pipeline import runner
from stsae.pipeline.contract import (
    StageContract,
    UndeclaredConfigReadError,
    config_slice,
    restricted,
)

CONTRACT = StageContract(name="demo", help="", reads=("run.seed", "train", "data.windowing.fs_target"),
                         upstream=(), out_dir="demo")


def test_declared_keys_and_everything_inside_them_are_readable():
    config = load_config(None, ["train.lr=0.01"])
    view = restricted(config, CONTRACT)
    assert view.run.seed == config.run.seed
    assert view.train is config.train and view.train.lr == 0.01
    assert view.data.windowing.fs_target == config.data.windowing.fs_target


@pytest.mark.parametrize("read", [
    lambda view: view.eval, lambda view: view.run.name, lambda view: view.data.augment,
    lambda view: view.data.windowing.window_s])
def test_an_undeclared_read_fails_naming_the_stage_and_the_key(read):
    view = restricted(load_config(None), CONTRACT)
    with pytest.raises(UndeclaredConfigReadError, match=r"stage 'demo' read config key '(eval|run\.name|"
                       r"data\.augment|data\.windowing\.window_s)'"):
        read(view)


def test_the_view_is_read_only():
    view = restricted(load_config(None), CONTRACT)
    with pytest.raises(AttributeError, match="read-only"):
        view.run = None  # type: ignore[misc]


def test_the_fingerprint_slice_holds_exactly_the_declared_keys():
    config = load_config(None)
    sliced = config_slice(config, CONTRACT.reads)
    assert set(sliced) == set(CONTRACT.reads)
    assert sliced["train"] == config.train.model_dump(mode="json")


def test_an_external_input_must_also_be_a_declared_read():
    with pytest.raises(ValueError, match=r"encoder\.weights"):
        StageContract(name="x", help="", reads=("extract",), upstream=(), out_dir="x", inputs=("encoder.weights",))


def test_stages_read_what_the_reviewed_code_reads():
    reads = {stage.name: stage.reads for stage in runner.STAGES}
    assert {"train.d_dict", "train.seeds"} <= set(reads["age"])
    assert "data.windowing.fs_target" in reads["extract"] and "data.windowing.fs_target" in reads["ground"]
    assert "data.augment" not in reads["prepare"] and "data.augment" in reads["extract"]
    assert runner.STAGE_BY_NAME["extract"].inputs == ("encoder.weights",)

"""Config parsing: typos, wrong types and out-of-range values fail with one line naming the key."""

from pathlib import Path

import pytest
import yaml

from stsae.config import Config, ConfigError, config_to_yaml, load_config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_unknown_key_names_the_key_and_suggests_the_closest(tmp_path):
    path = _write(tmp_path, {"train": {"d_dictt": 64}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown config key 'train.d_dictt' (did you mean 'train.d_dict'?)"


def test_unknown_section_is_rejected(tmp_path):
    path = _write(tmp_path, {"trian": {"k": 4}})
    with pytest.raises(ConfigError, match=r"unknown config key 'trian' \(did you mean 'train'\?\)"):
        load_config(path)


def test_wrong_type_names_the_key(tmp_path):
    path = _write(tmp_path, {"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match=r"invalid value for 'train.steps'.*got 'many'"):
        load_config(path)


def test_negative_dictionary_size_is_out_of_range(tmp_path):
    path = _write(tmp_path, {"train": {"d_dict": -4}})
    with pytest.raises(ConfigError, match=r"invalid value for 'train.d_dict'.*greater than or equal to 1"):
        load_config(path)


def test_k_larger_than_dictionary_is_rejected():
    with pytest.raises(ConfigError, match=r"train.k=64 must be <= train.d_dict=32"):
        load_config(None, ["train.d_dict=32", "train.k=64", "train.d_dict_sweep=[32]"])


def test_error_message_is_a_single_line(tmp_path):
    path = _write(tmp_path, {"data": {"synthetic": {"n_patients": 0}}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in str(err.value)
    assert "data.synthetic.n_patients" in str(err.value)


def test_override_sets_a_nested_key_with_yaml_typing():
    config = load_config(None, ["train.lr=0.005", "train.seeds=[3, 4]", "encoder.allow_random_weights=true"])
    assert config.train.lr == 0.005
    assert config.train.seeds == [3, 4]
    assert config.encoder.allow_random_weights is True


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(None, ["train.lr"])


def test_override_wins_over_file(tmp_path):
    path = _write(tmp_path, {"run": {"seed": 1}})
    assert load_config(path, ["run.seed=7"]).run.seed == 7


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_yaml_round_trips():
    config = load_config(None, ["train.k=8", "data.pulsedb_root=/data/pulsedb"])
    again = Config.model_validate(yaml.safe_load(config_to_yaml(config)))
    assert again == config


@pytest.mark.parametrize("name", ["demo.yaml", "default.yaml"])
def test_shipped_configs_validate(name):
    load_config(REPO / "configs" / name)


def test_default_yaml_lists_every_hyperparameter():
    """default.yaml documents every key, so a user never has to read the code to find a setting."""
    shipped = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    expected = Config().model_dump(mode="json")

    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in tree.items():
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    assert keys(expected) - keys(shipped) == set()


def test_default_yaml_carries_the_five_ablations_and_full_k_sweep():
    config = load_config(REPO / "configs" / "default.yaml")
    assert config.train.d_dict_sweep == [1024, 2048, 4096, 8192]
    assert set(config.train.ablations) == {"no_smooth", "no_stab", "no_div", "no_renorm", "vanilla"}


# ---- values that used to pass validation and fail later with a traceback ----------------------------------

BAD_OVERRIDES = [
    ("train.seeds=[]", "invalid value for 'train.seeds': List should have at least 1 item"),
    ("train.seeds=[0,", "--set train.seeds: value '[0,' is not valid YAML"),
    ("run.name=!!python/object:os.system ls", "--set run.name: value '!!python/object:os.system ls' is not valid "
     "YAML (could not determine a constructor for the tag"),
    ("data.windowing.stride_s=0.001", "data.windowing.stride_s=0.001 s is shorter than one sample at "
     "fs_target=125 Hz"),
    ("data.windowing.window_s=5", "data.windowing.window_s=5 s at fs_target=125 Hz gives 625 samples; "
     "PaPaGei-S needs 1250 (10 s at 125 Hz)"),
    ("data.windowing.band_low_hz=20", "data.windowing.band_low_hz=20 must be below band_high_hz=12"),
    ("data.split.age_bin_edges=[0, 50, 50, 90]", "data.split.age_bin_edges must be strictly increasing"),
    ("data.split.age_bin_edges=[40]", "invalid value for 'data.split.age_bin_edges': List should have at least 2"),
    ("aging.l1_ratios=[]", "invalid value for 'aging.l1_ratios': List should have at least 1 item"),
    ("aging.l1_ratios=[0.5, 1.5]", "invalid value for 'aging.l1_ratios.1': Input should be less than or equal to 1"),
    ("aging.l1_ratios=[0]", "invalid value for 'aging.l1_ratios.0': Input should be greater than 0"),
]


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES)
def test_bad_override_fails_at_load_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES[:6])
def test_bad_override_on_the_command_line_exits_2_with_one_line(tmp_path, override, message):
    from typer.testing import CliRunner

    from stsae.cli import app

    result = CliRunner().invoke(app, ["prepare", "--run-dir", str(tmp_path / "run"), "--set", override])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {_load_error(override)}"]
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def _load_error(override: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    return err.value


def test_config_file_that_is_not_utf8_is_named_in_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset 16); save the file as UTF-8"


def test_yaml_alias_bomb_is_echoed_in_a_bounded_line():
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9**9 leaves if expanded
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"run.name=[{', '.join(levels)}]"])
    message = str(err.value)
    assert message.startswith("config: invalid value for 'run.name': Input should be a valid string (got [")
    assert len(message) < 400 and "\n" not in message and message.endswith("...)")


def test_window_resampled_to_another_rate_is_refused_even_at_1250_samples():
    with pytest.raises(ConfigError, match=r"data\.windowing\.fs_target=250 Hz: PaPaGei-S was trained on 125 Hz"):
        load_config(None, ["data.windowing.fs_target=250", "data.windowing.window_s=5"])

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

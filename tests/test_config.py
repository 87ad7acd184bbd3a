"""The config: defaults written once (latentfss.config), the schema, the presets; bad keys are
refused in one line."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import REPO
from latentfss import runs
from latentfss.config import SECTIONS, SyntheticConfig, defaults, from_params, read_yaml, validate
from latentfss.errors import InputError

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def merged(*files):
    config = read_yaml(REPO / "config.yaml")
    for name in files:
        for key, value in read_yaml(REPO / name).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return validate(config, SCHEMA)


def test_every_default_is_written_once_in_the_dataclasses_and_fits_the_schema():
    """validate fills what a config leaves out from latentfss.config's dataclasses; the
    defaults pass the schema's types and ranges; config.yaml changes none of them."""
    config = validate({}, SCHEMA)
    assert config == defaults() == validate(read_yaml(REPO / "config.yaml"), SCHEMA)
    for name, cls in SECTIONS.items():
        assert from_params(cls, config[name], name) == cls()
    partly = validate({"train": {"iterations": 7}}, SCHEMA)["train"]
    assert partly == {**config["train"], "iterations": 7}  # the rest of the section kept


def test_numbers_read_as_their_fields_type_them_so_equal_rows_share():
    """`sigma: 20` is the default's 20.0, in a section and in a row: the same params, the
    same work (latentfss.runs keys rows by their values)."""
    config = validate({"model": {"sigma": 20}, "train": {"scale": [1, 2]}}, SCHEMA)
    assert config["model"]["sigma"] == 20.0 and isinstance(config["model"]["sigma"], float)
    assert config["train"]["scale"] == [1.0, 2.0] and config["train"]["iterations"] == 100
    rows = {"main": {}, "same": {"model": {"sigma": 20}}, "other": {"model": {"sigma": 10}}}
    shared = runs.owners(runs.rows(validate({"runs": rows}, SCHEMA)))
    assert shared["model"] == {"main": "main", "same": "main", "other": "other"}


def test_presets_carry_the_papers_settings():
    pascal, coco = merged("workflow/presets/pascal.yaml"), merged("workflow/presets/coco.yaml")
    for cfg, k, episodes in ((pascal, 5, 1000), (coco, 15, 4000)):
        assert (cfg["encoder"]["arch"], cfg["encoder"]["weights"]) == ("resnet50", "imagenet")
        assert cfg["annotation"]["input_size"] == 473
        assert cfg["train"]["crop"] == 473 and cfg["train"]["iterations"] == 6000
        assert (cfg["train"]["batch_episodes"], cfg["train"]["batch_pseudo"]) == (4, 32)
        assert cfg["train"]["lr"] == 1e-3 and cfg["model"]["sigma"] == 20
        assert cfg["cluster"]["k"] == k
        assert cfg["evaluate"]["episodes"] == episodes and cfg["evaluate"]["seeds"] == [
            0,
            1,
            2,
            3,
            4,
        ]
        assert cfg["evaluate"]["input_size"] == 473
        assert cfg["protocol"]["min_support_pixels"] == 2 * 32 * 32
    assert pascal["dataset"]["name"] == "pascal" and pascal["dataset"]["train_list"] == "voc_sbd"
    assert coco["dataset"]["name"] == "coco"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["dataset"].update(nme="pascal"), "unknown key 'dataset.nme'"),
        (lambda c: c.update(sed=1), "unknown key 'sed'"),
        (
            lambda c: c["synthetic"].update(num_train="many"),
            "synthetic.num_train: 'many' is not of",
        ),
        (lambda c: c["dataset"].update(name="voc"), "dataset.name: 'voc' is not one of"),
        (lambda c: c.update(folds=[0, 4]), "folds.1: 4 is not one of"),
        (lambda c: c["evaluate"].update(seeds=3), "evaluate.seeds: 3 is not of type array"),
    ],
)
def test_bad_config_names_the_key(edit, message):
    config = defaults()
    edit(config)
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("(", r"\(")) as e:
        validate(config, SCHEMA)
    assert "\n" not in str(e.value)


def test_strings_from_the_command_line_take_the_schemas_types():
    """Snakemake's --config gives every nested value as a string (YAML's BaseLoader)."""
    config = {
        "seed": "3",
        "train_seeds": ["1", "2"],
        "train": {"iterations": "5", "lr": "1e-3", "scale": ["0.5", "2"]},
        "evaluate": {"beta": "0.5", "fg_rectify": "False"},
        "model": {"mine": "true"},
        "encoder": {"weights": "none"},
        "dataset": {"root": "123"},
    }
    validate(config, SCHEMA)
    assert config["seed"] == 3 and config["train_seeds"] == [1, 2]
    assert config["train"]["iterations"] == 5 and config["train"]["lr"] == 0.001
    assert config["train"]["scale"] == [0.5, 2] and config["train"]["batch_episodes"] == 4
    assert config["evaluate"]["beta"] == 0.5 and config["evaluate"]["fg_rectify"] is False
    assert config["model"]["mine"] is True
    assert config["encoder"]["weights"] == "none" and config["dataset"]["root"] == "123"
    for section, value, message in [
        ("train", {"iterations": "five"}, "train.iterations: 'five' is not of type integer"),
        ("train", {"iterations": "5.5"}, "train.iterations: '5.5' is not of type integer"),
        ("model", {"mine": "yes please"}, "model.mine: 'yes please' is not of type boolean"),
    ]:
        with pytest.raises(InputError, match=message.replace(".", r"\.")):
            validate({section: value}, SCHEMA)


def test_stage_params_reject_unknown_keys_and_wrong_types():
    assert from_params(SyntheticConfig, '{"num_train": 5}', "synthetic").num_train == 5
    assert from_params(SyntheticConfig, "", "synthetic") == SyntheticConfig()
    with pytest.raises(InputError, match="unknown key 'synthetic.num_trian'"):
        from_params(SyntheticConfig, {"num_trian": 5}, "synthetic")
    with pytest.raises(InputError, match="synthetic.num_train: True is not of type int"):
        from_params(SyntheticConfig, {"num_train": True}, "synthetic")
    with pytest.raises(InputError, match="synthetic.num_train: 2.5 is not of type int"):
        from_params(SyntheticConfig, {"num_train": 2.5}, "synthetic")
    with pytest.raises(InputError, match="not valid JSON"):
        from_params(SyntheticConfig, "{num_train: 5}", "synthetic")


def test_stage_params_check_list_items():
    @dataclasses.dataclass(frozen=True)
    class Seeds:
        seeds: tuple[int, ...] = (0,)

    assert from_params(Seeds, {"seeds": [3, 4]}, "evaluate").seeds == (3, 4)  # frozen: a tuple
    with pytest.raises(InputError, match="evaluate.seeds: \\[3, 'x'\\] is not of type"):
        from_params(Seeds, {"seeds": [3, "x"]}, "evaluate")


def test_unreadable_yaml_names_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(InputError, match=r"bad\.yaml: not valid YAML \(line"):
        read_yaml(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match=r"missing\.yaml: cannot read"):
        read_yaml(tmp_path / "missing.yaml")

"""Run configs: one field per setting, offered as the command line's options and as YAML keys."""
from __future__ import annotations

import argparse

import pytest

from lemevit.config.options import add_options
from lemevit.errors import ConfigError, DataError
from lemevit.tasks.change import ChangeConfig
from lemevit.tasks.classification import ClassificationConfig
from lemevit.tasks.segmentation import SegmentationConfig


def parse(config, argv):
    parser = argparse.ArgumentParser()
    flags = add_options(parser, config, skip=("task",))
    return flags, vars(parser.parse_args(argv))


def test_every_field_is_an_option_whose_default_is_written_once_in_the_config():
    flags, given = parse(SegmentationConfig, ["--img-size", "64", "--no-flip", "--class-names", "a", "b"])
    assert flags["img_size"] == "--img-size" and flags["flip"] == "--no-flip"
    assert given["img_size"] == 64 and given["flip"] is False and given["class_names"] == ["a", "b"]
    assert given["epochs"] is None  # not given: the config's own default applies
    cfg = SegmentationConfig(data="d", output="o", **{k: v for k, v in given.items() if v is not None})
    assert (cfg.epochs, cfg.lr, cfg.img_size) == (50, 4e-4, 64)
    assert "mixup" not in flags and "head" in flags  # each task offers its own options only
    help_text = argparse.ArgumentParser()
    add_options(help_text, SegmentationConfig)
    assert "(default 50)" in help_text.format_help()


def test_lists_dicts_and_devices_parse_to_their_types():
    _, given = parse(ClassificationConfig, ["--crop-scale", "0.8", "1.0", "--split-files", "train=t.txt",
                                            "val=v.txt", "--devices", "auto"])
    assert given["crop_scale"] == [0.8, 1.0] and given["split_files"] == {"train": "t.txt", "val": "v.txt"}
    _, given = parse(ChangeConfig, ["--devices", "2"])
    assert given["devices"] == 2


def test_configs_check_their_values_naming_the_argument():
    with pytest.raises(ConfigError, match="split: must be a number in"):
        ClassificationConfig(data="d", output="o", split=1.5)
    with pytest.raises(ConfigError, match="stride: 300 is larger than the window"):
        SegmentationConfig(data="d", output="o", window=256, stride=300)
    with pytest.raises(ConfigError, match="data: is required"):
        ClassificationConfig(output="o")


def test_yaml_round_trip_and_unknown_keys(tmp_path):
    cfg = SegmentationConfig(data="d", output="o", preset="potsdam")
    cfg.save(tmp_path / "config.yaml")
    assert SegmentationConfig.from_yaml(tmp_path / "config.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("img_size: 64\nmixup: 0.2\n")
    with pytest.raises(DataError, match=r"bad\.yaml: unknown keys \['mixup'\]"):
        SegmentationConfig.from_yaml(tmp_path / "bad.yaml", data="d", output="o")


def test_a_resumed_config_takes_what_may_change_and_refuses_the_rest(tmp_path):
    saved = ClassificationConfig(data=str(tmp_path), output=str(tmp_path / "run"), epochs=10).absolute()
    resumed = saved.resumed_with({"epochs": 20, "devices": 2, "data": str(tmp_path), "model": "lemevit_tiny"},
                                 tmp_path / "config.yaml")
    assert (resumed.epochs, resumed.devices) == (20, 2)
    with pytest.raises(ConfigError, match="lr: 0.1 contradicts the run being resumed, which has 0.001"):
        saved.resumed_with({"lr": 0.1}, tmp_path / "config.yaml")


def test_yaml_numbers_in_exponent_notation_are_numbers_in_every_float_option(tmp_path, capsys):
    # PyYAML (YAML 1.1) reads 1e-3 as a string: it needs a dot (1.0e-3) to be a float.
    (tmp_path / "run.yaml").write_text("lr: 1e-3\nwarmup_epochs: 5e-1\ngradient_clip: 1E+1\nmilestones: [1e1, 2e1]\n"
                                       "lr_multipliers: {decoder: 1e1}\ncrop_scale: [5e-1, 1]\n")
    cfg = ClassificationConfig.from_yaml(tmp_path / "run.yaml", data="d", output="o")
    assert (cfg.lr, cfg.warmup_epochs, cfg.gradient_clip) == (1e-3, 0.5, 10.0)
    assert cfg.milestones == [10.0, 20.0] and cfg.lr_multipliers == {"decoder": 10.0} and cfg.crop_scale == [0.5, 1]
    assert isinstance(cfg.lr, float)
    (tmp_path / "bad.yaml").write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr: must be a non-negative number, got 'fast'"):
        ClassificationConfig.from_yaml(tmp_path / "bad.yaml", data="d", output="o")
    from lemevit.cli import main

    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--print-config"]) == 0
    assert "lr: 0.001\n" in capsys.readouterr().out


def test_a_task_s_module_takes_its_defaults_from_its_config():
    import dataclasses
    import inspect

    from lemevit.models.panoptic_fpn import PanopticHeads
    from lemevit.tasks import get_task, task_names

    # Runs saved before the heads' widths were settings were built with Detectron2's (PanopticHeads'); a new run's
    # config resolves the model's own and saves them.
    widths = {("panoptic", f.name): f.default for f in dataclasses.fields(PanopticHeads)}
    for name in task_names():
        task = get_task(name)
        config = {f.name: f for f in dataclasses.fields(task.config)}
        for parameter in inspect.signature(task.__init__).parameters.values():
            if parameter.name not in config or parameter.default is inspect.Parameter.empty:
                continue
            expected = widths.get((name, parameter.name), config[parameter.name].default)
            assert parameter.default == expected, (name, parameter.name, parameter.default, expected)

"""Installing pretrained weights that do not ship in the package: from a file or a URL, the sha256 checked before
the file appears in the weights directory, and timm loading the installed file offline."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import timm
import torch

import lemevit  # noqa: F401  (registers the models and their tags)
from lemevit.cli import main
from lemevit.errors import ConfigError, DataError
from lemevit.models import pretrained
from lemevit.models.factory import create_dense_encoder
from lemevit.models.pretrained import PRETRAINED, install_weights, pretrained_state_dict
from lemevit.tasks.base import initial_weights

NAME = "lemevit_tiny.aid150"
SHIPPED_FILE = pretrained.PACKAGE_WEIGHTS / f"{NAME}.safetensors"


@pytest.fixture
def damaged(tmp_path) -> Path:
    """A file named as the weights whose content is not theirs."""
    path = tmp_path / "download" / f"{NAME}.safetensors"
    path.parent.mkdir()
    original = SHIPPED_FILE.read_bytes()
    path.write_bytes(original[:-8] + b"\0" * 8)
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``, for at most 30 s; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    timer = threading.Timer(30, httpd.shutdown)
    timer.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        timer.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_install_from_a_file_then_timm_loads_it_offline(no_installed_weights, tmp_path, capsys):
    with pytest.raises(DataError, match="not installed"):
        timm.create_model(NAME, pretrained=True)
    source = tmp_path / "download" / f"{NAME}.safetensors"
    source.parent.mkdir()
    shutil.copy(SHIPPED_FILE, source)

    assert main(["weights", "install", str(source)]) == 0
    assert f"installed {NAME}" in capsys.readouterr().out
    assert sorted(p.name for p in no_installed_weights.iterdir()) == [f"{NAME}.safetensors"]
    model = timm.create_model(NAME, pretrained=True)
    assert model.pretrained_cfg["file"] == str(no_installed_weights / f"{NAME}.safetensors")
    stored = pretrained_state_dict(NAME)
    assert all(torch.equal(value, stored[key].float()) for key, value in model.state_dict().items())


def test_a_file_of_another_name_is_installed_under_the_name_given(no_installed_weights, tmp_path):
    source = tmp_path / "weights.bin"
    shutil.copy(SHIPPED_FILE, source)
    with pytest.raises(ConfigError, match="not named as any"):
        install_weights(source)
    assert install_weights(source, name=NAME) == (NAME, no_installed_weights / f"{NAME}.safetensors")
    with pytest.raises(ConfigError, match="lvt.nothing is none of"):
        install_weights(source, name="lvt.nothing")


def test_a_wrong_sha256_installs_nothing_and_keeps_the_good_file(no_installed_weights, damaged, capsys):
    assert main(["weights", "install", str(damaged)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(damaged) in error and PRETRAINED[NAME].sha256 in error
    assert not any(no_installed_weights.iterdir())  # no file, no temporary

    install_weights(SHIPPED_FILE)
    with pytest.raises(DataError, match="sha256"):
        install_weights(damaged)
    assert [p.name for p in no_installed_weights.iterdir()] == [f"{NAME}.safetensors"]
    assert (no_installed_weights / f"{NAME}.safetensors").read_bytes() == SHIPPED_FILE.read_bytes()


def test_install_from_a_url(no_installed_weights, server, tmp_path, damaged, capsys):
    shutil.copy(SHIPPED_FILE, tmp_path / "www" / f"{NAME}.safetensors")
    shutil.copy(damaged, tmp_path / "www" / "damaged.safetensors")

    assert main(["weights", "install", f"{server}/damaged.safetensors", "--name", NAME]) == 2
    assert "sha256" in capsys.readouterr().err and not any(no_installed_weights.iterdir())
    assert main(["weights", "install", f"{server}/missing/{NAME}.safetensors"]) == 2
    assert "cannot download" in capsys.readouterr().err and not any(no_installed_weights.iterdir())

    assert main(["weights", "install", f"{server}/{NAME}.safetensors", "--timeout", "10"]) == 0
    installed = no_installed_weights / f"{NAME}.safetensors"
    assert timm.create_model(NAME, pretrained=True).pretrained_cfg["file"] == str(installed)


def test_install_by_name_downloads_from_the_registered_address(no_installed_weights, server, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="has no download address"):
        install_weights(NAME)
    shutil.copy(SHIPPED_FILE, tmp_path / "www" / "file")
    monkeypatch.setitem(PRETRAINED, NAME, dataclasses.replace(PRETRAINED[NAME], url=f"{server}/file"))
    assert install_weights(NAME) == (NAME, no_installed_weights / f"{NAME}.safetensors")
    assert pretrained_state_dict(NAME)


def test_missing_weights_say_how_to_get_them_in_one_line(no_installed_weights, monkeypatch, capsys):
    with pytest.raises(DataError) as raised:
        timm.create_model(NAME, pretrained=True)
    message = str(raised.value)
    assert "\n" not in message and "lemevit weights install FILE" in message and str(no_installed_weights) in message
    assert f"{NAME}.safetensors" in message and PRETRAINED[NAME].sha256 in message

    url = "https://example.org/w.safetensors"
    monkeypatch.setitem(PRETRAINED, NAME, dataclasses.replace(PRETRAINED[NAME], url=url))
    assert main(["weights", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert "not installed" in line and f"lemevit weights install {NAME}" in line
    assert url in line


def test_the_listing_shows_scores_data_and_command(capsys):
    assert main(["models", "--pretrained"]) == 0
    listing = capsys.readouterr().out
    assert "held-out top-1 76.4%, top-5 95.9% (AID, 970 scenes)" in listing
    assert "trained by: lemevit train --data AID150/train" in listing and "data: AID scene recognition" in listing
    assert timm.create_model(NAME).pretrained_cfg["notes"][0].startswith("held-out top-1 76.4%")
    assert timm.create_model("lemevit_tiny").pretrained_cfg.get("notes") is None  # the untagged one is the paper's


def test_the_wheel_ships_only_small_registered_weights():
    """The package stays a reasonable pip install: what lemevit/weights holds (it all goes into the wheel) is
    registered weights, 25 MiB in all at most; larger ones are installed into the weights directory."""
    shipped = sorted(pretrained.PACKAGE_WEIGHTS.glob("*.safetensors"))
    assert shipped and all(p.name[:-len(".safetensors")] in PRETRAINED for p in shipped)
    assert sum(p.stat().st_size for p in shipped) <= 25 * 2**20


def test_a_registry_entry_is_all_new_weights_need(monkeypatch):
    """A later run's weights are one more PRETRAINED entry: the model file's configs take the tag from it, with its
    scores and command, and the untagged model stays timm's default (the published architecture)."""
    from lemevit.models.pretrained import PretrainedWeights, with_tagged_cfgs

    entry = PretrainedWeights("lvt.rs", "0" * 64, "scenes", "research", cfg=dict(num_classes=51),
                              heldout={"AID": {"top1": 0.5, "top5": 0.75}}, command="lemevit train --model lvt")
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    default = timm.models.generate_default_cfgs(with_tagged_cfgs({"lvt": {"url": "", "num_classes": 1000}}))["lvt"]
    assert default.tags[0] == "" and default.cfgs[""].num_classes == 1000
    tagged = default.cfgs["rs"]
    assert tagged.num_classes == 51 and tagged.file.endswith("lvt.rs.safetensors")
    assert tagged.notes == ("held-out top-1 50.0%, top-5 75.0% (AID)", "trained by: lemevit train --model lvt")


REPOSITORY_WEIGHTS = Path(__file__).parents[2] / "weights"


def _repository_file(name: str) -> Path:
    """Where a clone holds the file of the registered weights ``name``: in the package, or in weights/."""
    shipped = SHIPPED_FILE.parent / f"{name}.safetensors"
    return shipped if shipped.is_file() else REPOSITORY_WEIGHTS / f"{name}.safetensors"


def test_the_repository_holds_the_file_of_every_registered_weight_and_no_other():
    unregistered = {p.name for p in REPOSITORY_WEIGHTS.glob("*.safetensors")} - {
        PRETRAINED[n].filename for n in PRETRAINED}
    assert not unregistered, f"weights/ holds files lemevit does not register: {sorted(unregistered)}"
    missing = [n for n in PRETRAINED if not _repository_file(n).is_file()]
    assert not missing, f"registered weights without a file in the package or weights/: {missing}"


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_every_registered_weight_installs_as_the_readme_says_and_loads_offline(name, no_installed_weights, capsys):
    """The README's install command for a clone (`lemevit weights install weights/*.safetensors`), then timm's
    create_model: the classifier the registry describes, its input size, its classes named."""
    assert main(["weights", "install", str(_repository_file(name))]) == 0
    assert f"installed {name}" in capsys.readouterr().out
    model = timm.create_model(name, pretrained=True).eval()
    cfg = model.pretrained_cfg
    assert cfg["file"] == str(no_installed_weights / f"{name}.safetensors")
    assert model.num_classes == cfg["num_classes"] == len(cfg["label_names"])
    stored = pretrained_state_dict(name)
    assert all(torch.equal(value, stored[key].float()) for key, value in model.state_dict().items())
    with torch.no_grad():
        assert model(torch.randn(1, *cfg["input_size"])).shape == (1, cfg["num_classes"])
    # What --pretrained gives a dense task (segmentation, change, detection, panoptic): the encoder takes them.
    encoder = create_dense_encoder(name.split(".", 1)[0], checkpoint=initial_weights(name))
    assert len(encoder(torch.randn(1, *cfg["input_size"]))) == 4


def test_one_command_installs_several_files_and_name_is_refused_with_several(no_installed_weights, tmp_path, capsys):
    copies = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        copies.append(shutil.copy(SHIPPED_FILE, tmp_path / folder / SHIPPED_FILE.name))
    assert main(["weights", "install", *map(str, copies), "--name", NAME]) == 2
    assert "--name" in capsys.readouterr().err and not no_installed_weights.exists()
    assert main(["weights", "install", *map(str, copies)]) == 0
    assert capsys.readouterr().out.count(f"installed {NAME}") == 2

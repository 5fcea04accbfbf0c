"""Input listing (as train lists a data set) and the checks on outputs."""
from __future__ import annotations

import pytest

from lemevit.errors import ConfigError, DataError
from lemevit.io.paths import check_distinct_names, check_outputs_spare_inputs, check_writable_folder, list_images


def test_folders_are_listed_as_train_lists_them(tmp_path):
    for name in ("b.png", "A.JPG", "._b.png", "notes.txt", ".ipynb_checkpoints/x.png", "sub/c.tif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    listed = list_images([tmp_path, tmp_path / "b.png", str(tmp_path / "*.png")])
    assert [p.relative_to(tmp_path).as_posix() for p in listed] == ["A.JPG", "b.png", "sub/c.tif"]
    with pytest.raises(DataError, match="no such file or folder"):
        list_images([tmp_path / "absent.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images([tmp_path / "empty"])


def test_outputs_that_are_inputs_however_spelt_are_refused(tmp_path):
    scene = tmp_path / "scene.png"
    scene.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(scene)
    check_outputs_spare_inputs([scene], [tmp_path / "map.png"])
    for output in (scene, tmp_path / "." / "scene.png", tmp_path / "link.png"):
        with pytest.raises(ConfigError, match="would overwrite the input"):
            check_outputs_spare_inputs([scene], [output])
    with pytest.raises(ConfigError, match="inputs named alike"):
        check_distinct_names([tmp_path / "a" / "s.png", tmp_path / "b" / "s.png"])


def test_an_output_folder_is_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="output: .*file is a file, so .*file/sub cannot be a folder"):
        check_writable_folder(tmp_path / "file" / "sub")
    assert check_writable_folder(tmp_path / "new" / "deeper").is_dir()

"""The command line."""
from __future__ import annotations


def test_cli_lists_models_with_parameter_counts(capsys):
    from lemevit.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lemevit_tiny" in out and "8,635,816" in out and "53,098,152" in out

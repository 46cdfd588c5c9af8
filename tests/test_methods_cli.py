"""``sparsevdit methods``: the list, ``show``, and its errors."""

import pytest
from typer.testing import CliRunner

from sparsevdit.cli import app
from sparsevdit.methods import list_methods, param_names

runner = CliRunner()
LAYOUT = ["--frames", "4", "--height", "4", "--width", "8", "-b", "16"]


def test_lists_every_method_with_its_parameters():
    result = runner.invoke(app, ["methods"], terminal_width=400)
    assert result.exit_code == 0, result.output
    for name in list_methods():
        assert name in result.output
        for param in param_names(name):
            assert param in result.output
    assert "decay_factor (0.2)" in result.output


@pytest.mark.parametrize("name", list_methods("static"))
def test_show_builds_each_method(name):
    result = runner.invoke(app, ["methods", "show", name, *LAYOUT], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "density" in result.output or "dense" in result.output
    result = runner.invoke(app, ["methods", "show", name, *LAYOUT, "-p", "dense_steps=3", "--step", "2"], terminal_width=400)
    assert result.exit_code == 0 and "runs full attention" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["methods", "show", "topk", *LAYOUT], "is dynamic"),
        (["methods", "show", "nope", *LAYOUT], "unknown method 'nope'"),
        (["methods", "show", "radial", *LAYOUT, "-p", "size=3"], "no parameter size; its parameters: dense_steps"),
        (["methods", "show", "radial", *LAYOUT, "-p", "decay_factor=-1"], "decay_factor"),
        (["methods", "show", "radial", *LAYOUT, "-p", "width"], "key=value"),
    ],
)
def test_show_errors_are_one_line(args, message):
    result = runner.invoke(app, args, terminal_width=400)
    assert result.exit_code == 2
    assert message in result.output

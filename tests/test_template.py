"""Command templates: parameters are substituted into words, never into shell syntax."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from balsam_dask.errors import InvalidSpec
from balsam_dask.template import (
    render,
    render_shell,
    template_fields,
    validate_template,
)


@dataclasses.dataclass
class Cfg:
    name: str


@pytest.mark.parametrize(
    ("command", "params", "expected"),
    [
        ("./sim --n {n} --out {out}", {"n": 4, "out": "a.txt"}, ["./sim", "--n", "4", "--out", "a.txt"]),
        # Dangerous values stay one argument each.
        ("echo {msg}", {"msg": "a; rm -rf /"}, ["echo", "a; rm -rf /"]),
        ("echo {msg}", {"msg": "$(reboot) `id` $HOME"}, ["echo", "$(reboot) `id` $HOME"]),
        ("echo {msg}", {"msg": 'it\'s "quoted"'}, ["echo", 'it\'s "quoted"']),
        ("echo {msg}", {"msg": "two\nlines"}, ["echo", "two\nlines"]),
        ("echo {msg}", {"msg": ""}, ["echo", ""]),
        ("cat {f} > /dev/null", {"f": "x"}, ["cat", "x", ">", "/dev/null"]),
        # Fields glued to text, quoted by the template author, format specs, attributes.
        ("./sim --out={out}", {"out": "my file"}, ["./sim", "--out=my file"]),
        ("echo '{greeting} world'", {"greeting": "hi there"}, ["echo", "hi there world"]),
        ('echo "{a}" {b}', {"a": "x y", "b": "z"}, ["echo", "x y", "z"]),
        ("./sim {n:04d} {x!r}", {"n": 7, "x": "s"}, ["./sim", "0007", "'s'"]),
        ("./sim {cfg.name} {files[0]}", {"cfg": Cfg("c1"), "files": ["f0", "f1"]}, ["./sim", "c1", "f0"]),
        ("./sim {w:>{width}}", {"w": "ab", "width": 4}, ["./sim", "  ab"]),
        ("echo {{literal}} {n}", {"n": 1}, ["echo", "{literal}", "1"]),
        # Unused parameters are fine.
        ("./sim", {"unused": 1}, ["./sim"]),
        # Lists are formatted element by element: no shell involved.
        (["./sim", "--msg", "{msg}"], {"msg": "a; rm -rf /"}, ["./sim", "--msg", "a; rm -rf /"]),
        (("./sim", "--n={n}", "'{q}'"), {"n": 2, "q": "x"}, ["./sim", "--n=2", "'x'"]),
    ],
)
def test_render(command: str | list[str], params: dict[str, object], expected: list[str]) -> None:
    assert render(command, params) == expected
    validate_template(command, params)


def test_injection_stays_one_argument() -> None:
    argv = render("./sim --name {name} --n {n}", {"name": "a; rm -rf /", "n": 3})
    assert argv == ["./sim", "--name", "a; rm -rf /", "--n", "3"]
    # The display form quotes it back so a shell would see the same argv.
    shell = render_shell("./sim --name {name}", {"name": "a; rm -rf /"})
    assert shell == "./sim --name 'a; rm -rf /'"
    assert shlex.split(shell) == ["./sim", "--name", "a; rm -rf /"]


@pytest.mark.parametrize(
    ("command", "params", "match"),
    [
        ("./sim {n}", {}, r"template './sim \{n\}' needs parameter 'n'; pass params=\{'n': \.\.\.\}"),
        (["./sim", "{out}"], {"n": 1}, r"needs parameter 'out'"),
        ("./sim {cfg.name}", {}, r"needs parameter 'cfg'"),
        ("./sim {w:>{width}}", {"w": "a"}, r"needs parameter 'width'"),
        ("./sim {}", {}, r"positional field \{\}; name every parameter"),
        ("./sim {0}", {}, r"positional field \{0\}"),
        ("./sim {n", {"n": 1}, r"is malformed .*literal brace as '\{\{'"),
        ("./sim '{n}", {"n": 1}, r"cannot be split into arguments .*close every quote"),
        ("   ", {}, r"template '   ' is empty: give a command such as './sim --n \{n\}'"),
        ([], {}, r"command=\[\] is empty"),
        (["./sim", 3], {}, r"command entry 3 .* every entry must be a string"),
        (b"./sim", {}, r"give a template string"),
        ("./sim {n}", ["n"], r"params=\['n'\] is invalid: give a dict"),
    ],
)
def test_errors(command: object, params: object, match: str) -> None:
    with pytest.raises(InvalidSpec, match=match):
        validate_template(command, params)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match=match):
        render(command, params)  # type: ignore[arg-type]


def test_render_time_format_errors_are_invalid_spec() -> None:
    with pytest.raises(InvalidSpec, match=r"cannot be rendered at '\{n:d\}'.*ValueError"):
        render("./sim {n:d}", {"n": "four"})
    with pytest.raises(InvalidSpec, match=r"AttributeError"):
        render("./sim {cfg.nope}", {"cfg": Cfg("c")})


def test_validate_does_not_format() -> None:
    class Loud:
        def __format__(self, spec: str) -> str:
            raise AssertionError("validate_template must not format parameters")

    validate_template("./sim {x}", {"x": Loud()})


def test_template_fields() -> None:
    assert template_fields("./sim {n} --out {out} {n:03d} {cfg.a} {w:{width}}") == (
        "n",
        "out",
        "cfg",
        "w",
        "width",
    )
    assert template_fields(["./sim"]) == ()

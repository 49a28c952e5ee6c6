"""The shared source formatter of the backends (rnnc.backends.pyfmt)."""

from __future__ import annotations

import ast
import shutil
import subprocess

import pytest

from rnnc.backends.pyfmt import (
    WIDTH,
    Namer,
    Seq,
    call,
    comment,
    doc_text,
    docstring,
    literal,
    py_float,
    py_str,
    with_comment,
)


LONG = {f"layer{i}.W": (64, 128) for i in range(12)}


def _ruff() -> str | None:
    try:
        from ruff.__main__ import find_ruff_bin

        return find_ruff_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("ruff")


def ruff_formatted(source: str) -> str:
    exe = _ruff()
    if exe is None:
        pytest.skip("ruff is not installed")
    cmd = [exe, "format", "--isolated", "--line-length", str(WIDTH), "--stdin-filename",
           "generated.py", "-"]
    done = subprocess.run(cmd, input=source, capture_output=True, text=True, check=True)
    return done.stdout


def test_literal_that_fits_stays_on_one_line():
    assert literal({"a": (1,), "b": [1.5, None, True]}, "X = ") == [
        'X = {"a": (1,), "b": [1.5, None, True]}'
    ]
    assert literal((), "EMPTY = ") == ["EMPTY = ()"]


def test_long_literal_explodes_with_trailing_commas():
    lines = literal(LONG, "PARAM_SHAPES = ")
    assert lines[0] == "PARAM_SHAPES = {"
    assert lines[1] == '    "layer0.W": (64, 128),'
    assert lines[-1] == "}"
    assert len(lines) == len(LONG) + 2
    assert all(line.endswith(",") for line in lines[1:-1])
    assert all(len(line) <= WIDTH for line in lines)
    assert ast.literal_eval("\n".join(lines).split(" = ", 1)[1]) == LONG


def test_nested_items_explode_only_where_needed():
    data = {"short": [1, 2], "long": ["x" * 30, "y" * 30, "z" * 30, "w" * 30]}
    lines = literal(data, "D = ")
    assert '    "short": [1, 2],' in lines
    assert '    "long": [' in lines and '        "' + "x" * 30 + '",' in lines


def test_long_string_becomes_implicit_concatenation():
    text = " ".join(["word"] * 60)
    lines = literal(text, "S = ")
    assert lines[0] == "S = (" and lines[-1] == ")"
    assert all(len(line) <= WIDTH for line in lines)
    assert ast.literal_eval("\n".join(lines)[4:]) == text


def test_call_splits_like_ruff():
    assert call("y = f", ["a", "b"], "    ") == ["    y = f(a, b)"]
    args = [f"argument_{i}" for i in range(7)]
    assert call("    y = some_function", args) == [
        "    y = some_function(",
        "        " + ", ".join(args),
        "    )",
    ]
    many = [f"argument_number_{i}" for i in range(8)]
    lines = call("y = g", many, tail=":")
    assert lines[0] == "y = g(" and lines[-1] == "):"
    assert lines[1:-1] == [f"    {a}," for a in many]
    seq = Seq([f"very_long_value_name_{i}" for i in range(6)])
    lines = call("z = jnp.concatenate", [seq, "axis=-1"], "    ")
    assert lines[1] == "        [" and lines[-3] == "        ],"


def test_float_and_string_literals():
    assert py_str("it's") == '"it\'s"'
    assert py_str('say "hi"') == "'say \"hi\"'"
    assert py_float(float("inf")) == 'float("inf")'
    assert py_float(float("-inf")) == '-float("inf")'
    assert py_float(float("nan")) == 'float("nan")'
    assert py_float(0.1) == "0.1"


SAMPLES = [
    ("PARAM_SHAPES", LONG),
    ("SPEC", {"model": {"name": "m", "layers": [{"cell": "lstm", "size": 256}] * 5},
              "note": " ".join(["a long description"] * 12),
              "clip": float("inf"), "empty": {}, "one": (1,)}),
    ("SHORT", [1, 2.5, "x", None]),
]


@pytest.mark.parametrize("name,value", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_literals_are_ruff_format_stable(name, value):
    source = "\n".join(literal(value, f"{name} = ")) + "\n"
    assert ruff_formatted(source) == source


def test_calls_docstrings_and_comments_are_ruff_format_stable():
    lines = ["def f(a, b):"]
    lines += docstring("One line.\n\nMore text: " + " ".join(["word"] * 40), "    ")
    lines.append(comment("a comment\nwith a line break", "    "))
    lines += with_comment("x = g(a, b)", "why " * 40, "    ")
    lines += call("    y = h", [f"argument_number_{i}" for i in range(8)])
    lines += call("z = k", [Seq([f"value_name_{i}" for i in range(12)]), "axis=-1"], "    ")
    lines.append("    return x, y, z")
    source = "\n".join(lines) + "\n"
    compile(source, "<generated>", "exec")
    assert ruff_formatted(source) == source


@pytest.mark.parametrize("text", ['ends with a quote"', 'has """ inside', "back\\slash",
                                  "line\nbreak\r\x00nul\u2028sep"])
def test_docstring_text_is_neutralised(text):
    lines = ["def f():"] + docstring(text, "    ") + ["    return 1"]
    tree = ast.parse("\n".join(lines))
    doc = ast.get_docstring(tree.body[0], clean=False)
    assert "\x00" not in doc and "\r" not in doc and "\u2028" not in doc
    for part in text.replace("\x00", " ").replace("\r", " ").replace("\u2028", " ").split():
        assert part in doc
    one = f'"""{doc_text(text)}"""'
    assert "\n" not in one
    assert ast.literal_eval(one).replace("\\", "").strip() != ""


def test_comment_text_is_neutralised_and_trimmed():
    line = comment("first\nsecond\x00third  \tfourth", "    ")
    assert line == "    # first second third fourth"
    assert "\n" not in comment("a\r\nb")
    long = comment("word " * 50, "        ")
    assert len(long) == WIDTH and long.endswith("...")
    assert comment("", "    ") == ""
    assert comment("text", width=6) == ""
    code = with_comment("x = 1", "note\nwith a break")
    assert code == ["x = 1  # note with a break"]
    ast.parse("\n".join(code))


def test_namer_avoids_builtins_keywords_and_reserved():
    names = Namer({"tape"})
    assert names("h") == "h"
    assert names("h") == "h"
    assert names("list") == "list_"
    assert names("lambda") == "lambda_"
    assert names("tape") == "tape_"
    assert names("_x") == "v_x"
    assert names("a.b") == "v_a_b"
    assert names.fresh("h") == "h_"

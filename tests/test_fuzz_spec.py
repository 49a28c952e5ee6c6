"""Fuzzing the front end: mutated specs from specs/ get `rnnc check`'s answer, or one
located RnncError, never another exception, a hang or a traceback.

Every valid spec in specs/ (both syntaxes) is mutated: tokens deleted, duplicated,
swapped; numbers made 0, -1, 1e30, nan, huge; names made unicode, very long or undefined;
blocks emptied; lines duplicated (duplicate keys, equations defined twice); unknown keys;
self-referential and cyclic equations; wrong arities; parentheses nested past the recursion
limit; tabs, CRLF and lone-CR line endings, a byte-order mark. YAML specs are also mutated
as data: every key's value replaced by a value of another type, keys dropped or added,
anchors and aliases, tags. A spec that parses must also survive `fmt` in both syntaxes.

The examples are few, so the suite stays fast; a long run finds more:

    RNNC_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz_spec.py --hypothesis-seed=1
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rnnc.cli import app
from rnnc.compiler import build
from rnnc.errors import RnncError
from rnnc.ir.lower import Sizes
from rnnc.spec import parse_spec
from rnnc.spec.printer import to_text, to_yaml


ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p for p in (ROOT / "specs").rglob("*") if p.suffix in (".rnn", ".yaml"))
TEXTS = {p: p.read_text(encoding="utf-8") for p in SPECS}
EXAMPLES = int(os.environ.get("RNNC_FUZZ_EXAMPLES", "0")) or None
SECONDS = 20  # one check of a mutated spec takes well under a second


def _settings(default: int):
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=EXAMPLES is None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """specs/ copied, so that a spec's data files (text(path: ...)) are found."""
    d = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(ROOT / "specs", d, dirs_exist_ok=True)
    return d


@contextmanager
def _time_limit(seconds: int):
    def fail(signum, frame):
        raise TimeoutError(f"no answer in {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check(text: str, name: str, base: Path) -> None:
    """What `rnnc check` does with ``text``: it either passes or raises one located
    RnncError; a spec that parses prints in both syntaxes and reads back as itself."""
    with _time_limit(SECONDS):
        try:
            spec = parse_spec(text, name)
        except RnncError as err:
            _located(err)
            return
        printable = _fmt_round_trips(spec)
        if _big_counts(text):
            # `n: 20002000` (a duplicated digit) is a valid count: `check` then builds that
            # many examples to learn the data's sizes, which takes minutes; the sizes are
            # given instead (a dataset's own options are checked when it is built)
            sizes = Sizes(5, 5, None, None)
        else:
            sizes = None
        try:
            program = build(spec, sizes, base_dir=base)
        except RnncError as err:
            _located(err)
            return
        assert program.model.param_count > 0
        assert printable, "fmt --to yaml refuses a spec that checks"


def _big_counts(text: str) -> bool:
    return any(int(d) > 50_000 for d in re.findall(r"(?<![\w.])\d+(?![\w.])", text))


def _located(err: RnncError) -> None:
    shown = err.render()
    assert "Traceback" not in shown
    if err.span is not None:
        assert shown.startswith(f"{err.span.filename}:{err.span.line}:{err.span.column}: ")
    else:  # only errors about the world outside the spec (a missing data file) have none
        assert "no such file" in shown or "does not exist" in shown or "cannot read" in shown \
            or "is a folder" in shown, shown


def _fmt_round_trips(spec) -> bool:
    """Whether the spec prints as YAML; where it prints, it reads back as itself."""
    printable = True
    for printer, suffix in ((to_text, "rnn"), (to_yaml, "yaml")):
        try:
            out = printer(spec)
        except RnncError as err:  # a YAML spec the text language cannot say, or a name
            _located(err)          # given twice, which a YAML mapping cannot hold
            printable = printable and suffix == "rnn"
            continue
        again = parse_spec(out, f"fmt.{suffix}")
        assert again == spec, out
        assert printer(again) == out
    return printable


# ---------------------------------------------------------------- text mutations

_TOKEN = re.compile(r"""\#[^\n]*|"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|"""
                    r"""(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|\r?\n|[ \t]+|.""")

NUMBERS = ["0", "-1", "1e30", "-1e30", "1e999", "nan", "inf", ".nan", "-.inf", "0.0", "-0",
           str(2 ** 63), str(10 ** 40), "1e-400", "0.5", "007", "0x10", "1_000", "2147483648",
           "99999999999999999999999", "1.", ".5", "+3", "1e5"]
NAMES = ["h", "x", "W", "hidden", "X", "lstm", "gru", "elman", "tanh", "sigmoid", "sum",
         "mean", "clip", "if", "then", "else", "none", "init", "true", "false", "auto", "and",
         "not", "state", "param", "option", "output", "cell", "model", "train", "layer",
         "input", "head", "data", "epochs", "bptt", "k1", "k2", "h'", "c'", "undefined_name",
         "é", "λ", "x\u200b", "ｈ", "a" * 5000, "_", "__class__", "import", "def", "print",
         "lambda", "None", "True", "np", "self", "sys", "os"]
PUNCT = ["(", ")", "[", "]", "{", "}", ",", ":", "=", "'", "@", "*", "/", "+", "-", "==", "<",
         ";", "\n", "\t", "#", '"', "\\", "\r", "\x00", "\ufeff", "\u2028", "|", "!!", "&a",
         "*a", "..."]


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


@st.composite
def text_mutant(draw, suffix: str = ".rnn") -> tuple[str, str]:
    path = draw(st.sampled_from([p for p in SPECS if p.suffix == suffix]))
    text = TEXTS[path]
    for _ in range(draw(st.integers(1, 3))):
        text = draw(_mutation(text))
    return text, path.name


@st.composite
def _mutation(draw, text: str) -> str:
    toks = _tokens(text)
    code = [i for i, t in enumerate(toks) if t.strip()]
    if not code:
        return text
    kind = draw(st.sampled_from([
        "delete", "duplicate", "swap", "rename", "rename", "number", "number", "name",
        "punct", "nest", "line_dup",
        "line_delete", "line_swap", "empty_block", "self_ref", "cycle", "arity",
        "line_endings", "bom", "tabs", "insert_equation", "truncate"]))
    i = draw(st.sampled_from(code))
    lines = text.split("\n")
    if kind == "delete":
        del toks[i]
    elif kind == "duplicate":
        toks.insert(i, toks[i])
    elif kind == "swap":
        j = draw(st.sampled_from(code))
        toks[i], toks[j] = toks[j], toks[i]
    elif kind == "rename":  # another name of the same spec: the syntax stays valid
        names = [k for k in code if re.fullmatch(r"[A-Za-z_]\w*", toks[k])] or code
        toks[draw(st.sampled_from(names))] = toks[draw(st.sampled_from(names))]
    elif kind == "number":
        nums = [k for k in code if re.fullmatch(r"[\d.]+(e[-+]?\d+)?", toks[k])] or code
        toks[draw(st.sampled_from(nums))] = draw(st.sampled_from(NUMBERS))
    elif kind == "name":
        names = [k for k in code if re.fullmatch(r"[A-Za-z_]\w*", toks[k])] or code
        toks[draw(st.sampled_from(names))] = draw(st.sampled_from(NAMES))
    elif kind == "punct":
        toks.insert(i, draw(st.sampled_from(PUNCT)))
    elif kind == "nest":
        depth = draw(st.sampled_from([2, 50, 195, 201, 300, 450, 2000, 20000]))
        left, right = draw(st.sampled_from([("(", ")"), ("tanh(", ")"), ("[", "]"),
                                            ("-", ""), ("{a: ", "}"), ("f(", ")")]))
        toks[i] = left * depth + toks[i] + right * depth
    elif kind == "line_dup":
        k = draw(st.integers(0, len(lines) - 1))
        lines.insert(k, lines[k])
        return "\n".join(lines)
    elif kind == "line_delete":
        del lines[draw(st.integers(0, len(lines) - 1))]
        return "\n".join(lines)
    elif kind == "line_swap":
        a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines[a], lines[b] = lines[b], lines[a]
        return "\n".join(lines)
    elif kind == "empty_block":
        return re.sub(r"\{[^{}]*\}", "{}", text, count=draw(st.integers(1, 3)))
    elif kind == "self_ref":
        return re.sub(r"^(\s*)(\w+)(')? = (.*)$", r"\1\2\3 = \2 + \4", text, count=1,
                      flags=re.M)
    elif kind == "cycle":
        return re.sub(r"^(\s*)(\w+) = (.*)$", r"\1\2 = later + \3\n\1later = \2", text,
                      count=1, flags=re.M)
    elif kind == "arity":
        fn = draw(st.sampled_from(["tanh", "sigmoid", "clip", "sum", "mean", "relu", "sqrt",
                                   "lstm", "adam", "reber", "orthogonal", "uniform"]))
        args = draw(st.sampled_from(["()", "(x, h)", "(x)", "(1, 2, 3, 4)", "(h, 0, 1)"]))
        toks.insert(i, fn + args)
    elif kind == "line_endings":
        return text.replace("\n", draw(st.sampled_from(["\r\n", "\r", "\n\r", "\u2028",
                                                         "\x85"])))
    elif kind == "bom":
        return "\ufeff" + text
    elif kind == "tabs":
        return text.replace("  ", "\t")
    elif kind == "insert_equation":
        eq = draw(st.sampled_from([
            "unused = tanh(V @ x)", "h' = h", "y = undefined + 1", "z = z", "q = 1 / 0",
            "w = exp(1e3)", "r = x[0:100000]", "s = [x]", "t = -(-(-h))", "u = if 1 then h else",
            "state h", "param W[0, 0]", "param W[-1]", "option k = 1e400", "output nothing",
            "layer lstm(hidden: 0)", "epochs -1", "head softmax(at: sideways)",
            "dtype float16", "input onehot(vocab: 0)", "batch 0"]))
        k = draw(st.integers(0, len(lines)))
        lines.insert(k, "  " + eq)
        return "\n".join(lines)
    elif kind == "truncate":
        return text[:draw(st.integers(0, len(text)))]
    return "".join(toks)


# ---------------------------------------------------------------- YAML mutations

OTHER_VALUES = [None, True, False, 0, -1, 1e30, float("nan"), float("inf"), 10 ** 40, "",
                "x", "é", "a" * 3000, [], [1, 2], {}, {"a": 1}, [[[[]]]], {"lstm": None},
                "1e999", "tanh(", "W @ @ x", "h'", 0.5, -0.0, [None], {"": ""}, {None: 1},
                {1: 2}, "none", "auto", "!!python/object:os.system", "\x00", "{", "- -"]


def _paths(data, path=()):
    yield path
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*path, i))


def _replace(data, path, value):
    if not path:
        return value
    head, *rest = path
    if isinstance(data, dict):
        return {k: (_replace(v, rest, value) if k == head else v) for k, v in data.items()}
    return [(_replace(v, rest, value) if i == head else v) for i, v in enumerate(data)]


def _delete(data, path):
    if len(path) == 1:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k != path[0]}
        return [v for i, v in enumerate(data) if i != path[0]]
    head, *rest = path
    if isinstance(data, dict):
        return {k: (_delete(v, rest) if k == head else v) for k, v in data.items()}
    return [(_delete(v, rest) if i == head else v) for i, v in enumerate(data)]


YAML_SNIPPETS = [
    "a: &x [1, 2]\nb: *x\n", "<<: {name: m}\n", "model: !!python/object:os.system ls\n",
    "? [complex]\n: key\n", "model: &m {name: m}\ntrain: *m\n", "%YAML 1.1\n---\n",
    "---\n...\n---\n", "model:\n\tname: m\n", "model: {name: m\n", "- a\n- b\n",
    "cells: {c: {inputs: [x], state: [h], equations: {\"h'\": \"h' \"}}}\n",
    "model: 2001-01-01\n", "model: 0x10\n", "model: 1:20\n", "train: {epochs: 1e3}\n",
    "model: {name: m, name: n}\n", "\x85", "\u2028", "\ufeff",
]


@st.composite
def yaml_mutant(draw) -> tuple[str, str]:
    path = draw(st.sampled_from([p for p in SPECS if p.suffix == ".yaml"]))
    data = yaml.safe_load(TEXTS[path])
    kind = draw(st.sampled_from(["value", "delete", "unknown", "text", "snippet", "rename"]))
    paths = list(_paths(data))
    where = draw(st.sampled_from(paths))
    if kind == "value":
        data = _replace(data, where, draw(st.sampled_from(OTHER_VALUES)))
    elif kind == "delete" and where:
        data = _delete(data, where)
    elif kind == "unknown":
        parents = [p for p in paths if isinstance(_get(data, p), dict)]
        p = draw(st.sampled_from(parents))
        inner = dict(_get(data, p))
        inner[draw(st.sampled_from(["unknown_key", "name", "epoch", "layer", "hiden", "é",
                                    "inputs", "equations", "doc"]))] = draw(
            st.sampled_from(OTHER_VALUES))
        data = _replace(data, p, inner)
    elif kind == "rename":
        parents = [p for p in paths if isinstance(_get(data, p), dict) and _get(data, p)]
        p = draw(st.sampled_from(parents))
        inner = _get(data, p)
        old = draw(st.sampled_from(sorted(inner, key=str)))
        new = draw(st.sampled_from(["x", "h'", "λ", "class", "1", "", "a b", "__init__"]))
        data = _replace(data, p, {(new if k == old else k): v for k, v in inner.items()})
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, TypeError, ValueError, RecursionError):
        text = TEXTS[path]
    if kind == "text":
        text = draw(_mutation(text))
    elif kind == "snippet":
        lines = text.split("\n")
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(YAML_SNIPPETS)))
        text = "\n".join(lines)
    return text, path.name


def _get(data, path):
    for k in path:
        data = data[k]
    return data


# ---------------------------------------------------------------- the tests


@_settings(60)
@given(text_mutant())
def test_mutated_text_specs_check_or_give_one_located_error(data_dir, mutant):
    text, name = mutant
    check(text, name, data_dir)


@_settings(60)
@given(yaml_mutant())
def test_mutated_yaml_specs_check_or_give_one_located_error(data_dir, mutant):
    text, name = mutant
    check(text, name, data_dir)


@_settings(10)
@given(st.one_of(text_mutant(), yaml_mutant()))
def test_the_cli_answers_a_mutated_spec_without_a_traceback(data_dir, mutant):
    text, name = mutant
    spec = data_dir / f"mutant{Path(name).suffix}"
    spec.write_text(text, encoding="utf-8", newline="")
    with _time_limit(SECONDS):
        r = CliRunner().invoke(app, ["check", str(spec)])
    assert r.exit_code in (0, 1), r.output
    assert "Traceback" not in r.output
    if r.exit_code == 1:
        assert isinstance(r.exception, SystemExit)
        assert "error: " in r.output


def test_nan_and_huge_numbers_are_not_silently_taken():
    """A sanity check of the fuzzer's oracle: these are errors, at the number."""
    for text, name, message in [
            ("model m {\n  input onehot(vocab: 5)\n  layer elman(hidden: 1e999)\n}\n", "n.rnn",
             "the number 1e999 is too large"),
            ("model:\n  name: m\n  input: {onehot: {vocab: .nan}}\n", "n.yaml",
             "'.nan' is not a finite number")]:
        with pytest.raises(RnncError) as info:
            build(parse_spec(text, name))
        assert info.value.message == message and info.value.span.line == 3

"""The Reber and embedded Reber grammars (Reber 1967; Hochreiter & Schmidhuber 1997).

Both grammars are deterministic finite automata over the 7 symbols
``B T P S X V E``; every state has one or two outgoing symbols, each taken with
equal probability. The Reber graph (state numbers as used below)::

    0 -B-> 1
    1 -T-> 2    1 -P-> 3
    2 -S-> 2    2 -X-> 4
    3 -T-> 3    3 -V-> 5
    4 -X-> 3    4 -S-> 6
    5 -P-> 4    5 -V-> 6
    6 -E-> accept

e.g. ``BTSSXXTVVE``, ``BPVVE``. An embedded Reber string is ``B T <reber> T E`` or
``B P <reber> P E``: the second symbol must be remembered across the whole inner
string to predict the penultimate one.

Strings are sampled conditioned on their length lying in ``[min_length,
max_length]``, exactly (not by rejection), via the probability of finishing in
exactly ``r`` more symbols from each state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnc.data.core import Dataset, Options, Split, make_rngs, split_examples
from rnnc.errors import DataError


SYMBOLS = ("B", "T", "P", "S", "X", "V", "E")
"""The alphabet; a symbol's token id is its index here."""

SYMBOL_ID = {s: i for i, s in enumerate(SYMBOLS)}

REBER_DEFAULTS = {"n": 2000, "min_length": 5, "max_length": 30, "split": [0.8, 0.1, 0.1]}
EMBEDDED_REBER_DEFAULTS = {"n": 2000, "min_length": 9, "max_length": 40,
                           "split": [0.8, 0.1, 0.1]}


@dataclass(frozen=True)
class Automaton:
    """A deterministic automaton: ``edges[state]`` lists ``(symbol_id, next_state)``.

    A state without edges accepts (the string is complete).
    """

    start: int
    edges: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def n_states(self) -> int:
        return len(self.edges)

    def step(self, state: int, symbol: int) -> int | None:
        """The state after reading ``symbol`` in ``state``, or None if illegal."""
        for sym, nxt in self.edges[state]:
            if sym == symbol:
                return nxt
        return None

    def legal_mask(self, state: int) -> np.ndarray:
        """``(V,)`` bool: the symbols allowed in ``state``."""
        mask = np.zeros(len(SYMBOLS), dtype=bool)
        for sym, _ in self.edges[state]:
            mask[sym] = True
        return mask

    def accepts(self, symbols: list[int]) -> bool:
        """Whether the whole token sequence is a string of the grammar."""
        state: int | None = self.start
        for sym in symbols:
            state = self.step(state, sym)
            if state is None:
                return False
        return not self.edges[state]


def _edges(table: dict[int, list[tuple[str, int]]], n: int, offset: int = 0):
    return [tuple((SYMBOL_ID[s], nxt + offset) for s, nxt in table.get(i, [])) for i in range(n)]


_REBER_TABLE = {
    0: [("B", 1)],
    1: [("T", 2), ("P", 3)],
    2: [("S", 2), ("X", 4)],
    3: [("T", 3), ("V", 5)],
    4: [("X", 3), ("S", 6)],
    5: [("P", 4), ("V", 6)],
    6: [("E", 7)],
}
_REBER_STATES = 8  # 7 is the accepting state


def reber_automaton() -> Automaton:
    """The Reber grammar."""
    return Automaton(0, tuple(_edges(_REBER_TABLE, _REBER_STATES)))


def embedded_reber_automaton() -> Automaton:
    """The embedded Reber grammar: ``B (T reber T | P reber P) E``.

    States: 0 -B-> 1; 1 -T-> upper copy, 1 -P-> lower copy; each copy's accepting
    state emits its own T or P to the shared state ``final``, which emits E.
    """
    upper, lower = 2, 2 + _REBER_STATES
    final = lower + _REBER_STATES
    accept = final + 1
    edges: list[tuple[tuple[int, int], ...]] = [
        ((SYMBOL_ID["B"], 1),),
        ((SYMBOL_ID["T"], upper), (SYMBOL_ID["P"], lower)),
    ]
    for offset, symbol in ((upper, "T"), (lower, "P")):
        copy = _edges(_REBER_TABLE, _REBER_STATES, offset)
        copy[-1] = ((SYMBOL_ID[symbol], final),)  # the inner string's end -> T or P
        edges.extend(copy)
    edges.append(((SYMBOL_ID["E"], accept),))
    edges.append(())
    return Automaton(0, tuple(edges))


def completion_probabilities(automaton: Automaton, max_length: int) -> np.ndarray:
    """``(S, max_length + 1)`` float64: ``p[s, r]`` = probability that a random walk
    from state ``s`` completes the string in exactly ``r`` more symbols."""
    p = np.zeros((automaton.n_states, max_length + 1))
    for s, out in enumerate(automaton.edges):
        if not out:
            p[s, 0] = 1.0
    for r in range(1, max_length + 1):
        for s, out in enumerate(automaton.edges):
            if out:
                p[s, r] = sum(p[nxt, r - 1] for _, nxt in out) / len(out)
    return p


def sample_strings(automaton: Automaton, n: int, min_length: int, max_length: int,
                   rng: np.random.Generator) -> list[list[int]]:
    """``n`` random strings (token id lists), conditioned on min <= length <= max.

    The result has the same distribution as sampling freely and rejecting strings
    outside the length range.
    """
    p = completion_probabilities(automaton, max_length)
    weights = p[automaton.start, min_length: max_length + 1]
    total = weights.sum()
    if total <= 0:
        raise DataError(f"the grammar has no strings of length {min_length} to {max_length}",
                        hint="widen the range given by min_length and max_length")
    lengths = min_length + rng.choice(len(weights), size=n, p=weights / total)
    strings = []
    for length in lengths:
        u = rng.random(int(length))
        state, out = automaton.start, []
        for step in range(int(length)):
            remaining = int(length) - step
            edges = automaton.edges[state]
            k = 0
            if len(edges) > 1:  # edge k with probability ~ P(finish from its target)
                w = [p[nxt, remaining - 1] for _, nxt in edges]
                target, acc = u[step] * sum(w), w[0]
                while target >= acc and k < len(w) - 1:
                    k += 1
                    acc += w[k]
            sym, state = edges[k]
            out.append(sym)
        strings.append(out)
    return strings


def encode_strings(automaton: Automaton, strings: list[list[int]]) -> Split:
    """Next-symbol prediction arrays for token strings of the grammar.

    Returns a Split with ``x`` ``(N, T)`` = each string without its last symbol,
    ``y`` ``(N, T)`` = the string without its first symbol, ``lengths`` ``(N,)`` =
    string length - 1, and ``legal`` ``(N, T, 7)`` = the symbols the grammar allows
    after the prefix ``string[: t + 1]``. T = longest string - 1; padding is 0/False.
    """
    n = len(strings)
    steps = max(len(s) for s in strings) - 1
    x = np.zeros((n, steps), dtype=np.int32)
    y = np.zeros((n, steps), dtype=np.int32)
    legal = np.zeros((n, steps, len(SYMBOLS)), dtype=bool)
    lengths = np.zeros(n, dtype=np.int32)
    masks = [automaton.legal_mask(s) for s in range(automaton.n_states)]
    for i, string in enumerate(strings):
        length = len(string) - 1
        lengths[i] = length
        x[i, :length] = string[:-1]
        y[i, :length] = string[1:]
        state = automaton.start
        for t in range(length):
            state = automaton.step(state, string[t])
            legal[i, t] = masks[state]
    return Split(x=x, y=y, lengths=lengths, legal=legal)


def decode(tokens) -> str:
    """Token ids -> the string of grammar letters."""
    return "".join(SYMBOLS[int(t)] for t in tokens)


def _build(name: str, automaton: Automaton, shortest: int, opts: Options,
           seed: int) -> Dataset:
    n = opts.integer("n", minimum=1)
    min_length = opts.integer("min_length", minimum=shortest)
    max_length = opts.integer("max_length", minimum=min_length)
    fractions = opts.fractions()
    if max_length > 1000:  # longer strings are vanishingly rare (p < 1e-100)
        raise opts.error("max_length", "at most 1000")
    data_rng, split_rng = make_rngs(seed, 2)
    strings = sample_strings(automaton, n, min_length, max_length, data_rng)
    train, val, test = split_examples(encode_strings(automaton, strings), fractions,
                                      split_rng, name)
    lens = np.array([len(s) for s in strings])
    return Dataset(
        name=name, task="classify_step", input="tokens", n_in=len(SYMBOLS),
        n_out=len(SYMBOLS), train=train, val=val, test=test, metric="reber_accuracy",
        vocab=list(SYMBOLS),
        info={"string_length": {"min": int(lens.min()), "max": int(lens.max()),
                                "mean": float(lens.mean())}},
    )


def build_reber(opts: Options, seed: int) -> Dataset:
    """The ``reber`` dataset: next-symbol prediction on Reber strings."""
    return _build("reber", reber_automaton(), 5, opts, seed)


def build_embedded_reber(opts: Options, seed: int) -> Dataset:
    """The ``embedded_reber`` dataset: next-symbol prediction on embedded Reber strings."""
    return _build("embedded_reber", embedded_reber_automaton(), 9, opts, seed)

"""Sampling text from a character model, one character at a time with ``step``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rnnc.errors import TrainError


def encode_prime(prime: str, vocab: Sequence[str], what: str = "the prime") -> list[int]:
    """Token ids of ``prime``; TrainError naming a character the model never saw (in
    ``what``: the prime of `sample`, the text of `plot --gates`)."""
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = []
    for pos, ch in enumerate(prime):
        if ch not in index:
            raise TrainError(f"{what}'s character {ch!r} (position {pos}) is not in the "
                             f"model's vocabulary", hint="the model knows these characters: "
                             + repr("".join(vocab))[:200])
        ids.append(index[ch])
    return ids


def default_prime(vocab: Sequence[str], sample_cfg: dict[str, Any] | None = None) -> str:
    """The prime when none is given: the spec's `sample ... prime`, else a newline where
    the vocabulary has one (text starts after it), else its first character. Samples
    printed while training and `rnnc sample` start from the same text."""
    given = (sample_cfg or {}).get("prime")
    if given:
        return given
    return "\n" if "\n" in vocab else vocab[0]


def sample_heading(step: int, prime: str, length: int) -> str:
    """The line above a sample printed while training, which is the prime followed by
    the characters drawn after it (as `rnnc sample` prints it): the line says which is
    which."""
    return f"sample at step {step} (prime {prime!r}, then {length} drawn characters):"


def next_distribution(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs`` sharpened (T < 1) or flattened (T > 1): ``p^(1/T)``, renormalised."""
    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), 1e-300)) / temperature
    logp -= logp.max()
    p = np.exp(logp)
    return p / p.sum()


def sample_text(module: Any, params: dict[str, Any], vocab: Sequence[str], prime: str,
                length: int, temperature: float, rng: np.random.Generator,
                dtype: str = "float32", emit: Callable[[str], Any] | None = None) -> str:
    """``length`` characters following ``prime`` (which is fed first, state carried).

    ``emit``, if given, is called with the prime once it is read, then with each
    character as it is drawn (``rnnc sample`` prints as it goes: a Ctrl-C keeps the text
    so far)."""
    if not prime:
        raise TrainError("the prime is empty", hint="give at least one character: --prime 'T'")
    if not (0 < temperature < math.inf):  # also refuses NaN
        raise TrainError(f"the temperature must be a finite number > 0, not {temperature}")
    ids = encode_prime(prime, vocab)
    # a JAX module's step otherwise lays out the weights again for every character
    # (modules compiled before prepare_step existed lack it; NumPy modules do not need it)
    prepare = getattr(module, "prepare_step", None)
    if prepare is not None:
        params = prepare(params)
    state = module.initial_state(1, dtype)
    probs = None
    for tok in ids:
        probs, state = module.step(params, np.array([tok], dtype=np.int32), state)
    if emit is not None:
        emit(prime)
    out = []
    for _ in range(length):
        p = next_distribution(np.asarray(probs)[0], temperature)
        tok = int(rng.choice(len(p), p=p))
        out.append(vocab[tok])
        if emit is not None:
            emit(vocab[tok])
        probs, state = module.step(params, np.array([tok], dtype=np.int32), state)
    return "".join(out)

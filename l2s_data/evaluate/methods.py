"""The seven steering methods as a small registry, and how alphas are read.

=============  ============  ===========================================================
name           shown as      steering vector v (added as alpha * v at layer L*)
=============  ============  ===========================================================
none           none          no steering: the base model
prompt-only    prompt-only   no steering: the task's instruction is added to the query
mean-s         Mean-S        the mean P2S vector of the training samples (one [D] vector)
mean-s-ba      Mean-S(BA)    the mean P2S vector of one behaviour-agnostic pair
norm-rnd       Norm-Rnd      a random direction scaled to the sample's own P2S norm
l2s            L2S           g(h_X): the predictor applied to the input view at layer L'
p2s            P2S*          the sample's own P2S vector (an oracle: needs the test pair)
=============  ============  ===========================================================

Names are matched case-insensitively, and the shown names are accepted too
(``"Mean-S(BA)"``, ``"P2S*"``).

    >>> get_method("P2S*").name, get_method("Mean-S(BA)").label
    ('p2s', 'Mean-S(BA)')
    >>> parse_alphas([0, "1.5"])
    (0.0, 1.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from l2s_data.errors import ConfigError

__all__ = ["Method", "METHODS", "METHOD_NAMES", "get_method", "parse_alpha", "parse_alphas"]


@dataclass(frozen=True)
class Method:
    """One steering method: its id, the name a report shows, and what its vector needs."""

    name: str
    label: str
    steers: bool
    #: What the vector is made of: "mean_s", "mean_s_ba", "p2s", "h" (the input view at L').
    needs: tuple[str, ...]
    description: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", "none", False, (), "the base model, unsteered"),
    Method("prompt-only", "prompt-only", False, (), "an instruction added to the query, unsteered"),
    Method("mean-s", "Mean-S", True, ("mean_s",), "mean P2S vector of the training samples"),
    Method("mean-s-ba", "Mean-S(BA)", True, ("mean_s_ba",), "mean P2S vector of one behaviour-agnostic pair"),
    Method("norm-rnd", "Norm-Rnd", True, ("p2s",), "random direction with the sample's P2S norm"),
    Method("l2s", "L2S", True, ("h",), "the predictor's g(h_X) from the input view at layer L'"),
    Method("p2s", "P2S*", True, ("p2s",), "the sample's own P2S vector (oracle)"),
)}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
_ALIASES = {m.label.lower(): m.name for m in METHODS.values()} | {"mean-s(ba)": "mean-s-ba", "p2s*": "p2s"}


def get_method(name: str) -> Method:
    """The method called ``name`` (an id or a shown name); :class:`ConfigError` if unknown."""
    if not isinstance(name, str):
        raise ConfigError(f"method {name!r} is not a name; expected one of {', '.join(METHOD_NAMES)}.")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ConfigError(f"method {name!r} does not exist; expected one of {', '.join(METHOD_NAMES)} "
                          f"(or the shown names {', '.join(m.label for m in METHODS.values())}).")
    return METHODS[key]


def parse_alpha(value: object, *, where: str = "alpha") -> float:
    """One alpha as a finite float; :class:`ConfigError` naming ``where`` if it is not a number."""
    if isinstance(value, bool):
        raise ConfigError(f"{where} = {value!r} is not a number; expected e.g. 1.0 or 2.2.")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise ConfigError(f"{where} = {value!r} is not a number; expected e.g. 1.0 or 2.2.") from None
    else:
        raise ConfigError(f"{where} = {value!r} is not a number; expected e.g. 1.0 or 2.2.")
    if not math.isfinite(out):
        raise ConfigError(f"{where} = {value!r} is not a finite number; expected e.g. 1.0 or 2.2.")
    return out


def parse_alphas(value: object, *, where: str = "alphas") -> tuple[float, ...]:
    """An alpha or a list of alphas (a sweep) as a tuple of distinct floats, in the given order."""
    items: Sequence[object] = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError(f"{where} is empty; give one alpha or a list, e.g. [0.5, 1.0, 2.2].")
    out: list[float] = []
    for i, v in enumerate(items):
        a = parse_alpha(v, where=f"{where}[{i}]" if isinstance(value, (list, tuple)) else where)
        if a not in out:
            out.append(a)
    return tuple(out)

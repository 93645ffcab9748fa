"""Limits on the free-form JSON values an action carries (an HTTP body, SQL parameters), checked
when the action is parsed, so that no library deeper down meets a value it cannot take."""

from __future__ import annotations

import math
from typing import Any

#: deepest nesting of lists and objects accepted in a value
MAX_DEPTH = 64
#: integers must fit a signed 64-bit column or JSON number; bigger ones travel as strings
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1


def check_json(value: Any, what: str = "") -> None:
    """Raise ValueError (its text led by `what`, e.g. "parameter 2 ") unless `value` is plain
    JSON within the limits: objects with string keys, lists, strings of valid Unicode, finite
    numbers, 64-bit integers, true, false and null, nested at most MAX_DEPTH deep. Iterative, so
    any depth is safe to check."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ValueError(f"{what}is nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, list):
                stack.extend((v, depth + 1) for v in item)
                continue
            for key, v in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"{what}has an object key that is not a string ({type(key).__name__})")
                check_text(key, what)
                stack.append((v, depth + 1))
        else:
            check_scalar(item, what)


def check_scalar(item: Any, what: str = "") -> None:
    """Raise ValueError unless `item` is null, a boolean, a finite number within 64 bits, or text."""
    if item is None or isinstance(item, bool):
        return
    if isinstance(item, int):
        if not INT_MIN <= item <= INT_MAX:
            raise ValueError(f"{what}holds an integer outside the signed 64-bit range; send it as a string")
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise ValueError(f"{what}holds {item!r}, which is not a finite number")
    elif isinstance(item, str):
        check_text(item, what)
    else:
        raise ValueError(f"{what}holds a value of type {type(item).__name__}; "
                         "only JSON values (null, true/false, numbers, "
                         "strings, lists, objects) are accepted")


def check_text(text: str, what: str = "") -> None:
    """Raise ValueError if `text` holds lone surrogates (it could not be sent or stored as UTF-8)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what}is not valid Unicode text (it holds lone surrogates)") from None

"""Cache keys for function calls, the same in every process.

``call_key(fn, args, kwargs)`` is the key ``@cached`` uses when given no ``key=``:

    fn:<module>.<qualname>:<arguments as canonical JSON>

The arguments are bound to the function's signature first (defaults applied), so ``f(1)``,
``f(1, b=2)`` and ``f(a=1, b=2)`` with ``def f(a, b=2)`` share one key. A first parameter named
``self`` or ``cls`` is left out, so that a method's results are shared by every instance and
every process (give ``key=`` when they depend on the instance). The JSON is canonical (sorted
dict keys, no spaces), and only values with a stable text are accepted: str, int, float, bool,
None, bytes (as hex), and lists, tuples and dicts of them (dict keys must be str). Anything else
raises TypeError, because its text would differ between processes (``repr`` of an object holds
its address, ``hash`` of a str is randomized per process).

A key longer than KEY_MAX (250) bytes keeps its first 120 bytes and ends with ``#`` and the
SHA-256 of the whole key in hex, so long arguments still give distinct, bounded keys.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Callable

__all__ = ["KEY_MAX", "CallKey", "bounded_key", "call_key", "function_name"]

KEY_MAX = 250
"""The longest key, in bytes (KHALA_KEY_MAX)."""

_HASHED_HEAD = 120  # bytes of a long key kept readable before "#" and its SHA-256


def bounded_key(key: str) -> str:
    """``key`` if it fits in KEY_MAX bytes of UTF-8, else its head and ``#sha256-hex``."""
    raw = key.encode("utf-8")
    if len(raw) <= KEY_MAX:
        return key
    head = raw[:_HASHED_HEAD].decode("utf-8", errors="ignore")
    return f"{head}#{hashlib.sha256(raw).hexdigest()}"


def _stable(value: Any, where: str) -> Any:
    """``value`` as JSON-ready data with the same text in every process, or TypeError."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return [_stable(v, where) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict key {k!r} is not a str; give @cached a key=")
            out[k] = _stable(v, where)
        return out
    raise TypeError(
        f"{where}: a {type(value).__qualname__} has no text that is the same in every "
        f"process; give @cached a key= function"
    )


def function_name(fn: Callable[..., Any]) -> str:
    """``<module>.<qualname>`` of ``fn``: the part of its keys that names it."""
    return f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', repr(fn))}"


class CallKey:
    """The key function of one function: ``CallKey(fn)(args, kwargs)`` is ``call_key``'s key.

    Made once per decorated function, so that a call does not look the signature up again.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        """Read ``fn``'s name and signature."""
        self.fn = fn
        self.name = function_name(fn)
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have no signature
            self.signature = None
        params = list(self.signature.parameters) if self.signature else []
        self.skipped = params[0] if params and params[0] in ("self", "cls") else None

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key of the call ``fn(*args, **kwargs)``; TypeError if fn would refuse the call
        or an argument has no stable text."""
        if self.signature is None:
            arguments: Any = {"args": list(args), "kwargs": kwargs}
        else:
            bound = self.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            if self.skipped is not None:
                arguments.pop(self.skipped, None)
        text = json.dumps(
            _stable(arguments, self.name), sort_keys=True, separators=(",", ":"),
            ensure_ascii=False,
        )
        return bounded_key(f"fn:{self.name}:{text}")


def call_key(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The key of the call ``fn(*args, **kwargs)`` (see the module docstring)."""
    return CallKey(fn)(args, kwargs)

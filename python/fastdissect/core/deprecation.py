"""Old argument names and orders that keep working for one release (docs/api.md, "Old names")."""

from __future__ import annotations

import functools
import inspect
import warnings


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} is deprecated and goes in the next release: use {new}", DeprecationWarning,
                  stacklevel=stacklevel)


def _rename(name: str, kwargs: dict, old_to_new: dict, stacklevel: int) -> dict:
    used = [(old, new) for old, new in old_to_new.items() if old in kwargs]
    for old, new in used:
        if new in kwargs:
            raise TypeError(f"{name}() got both {old}= (its old name) and {new}=")
        kwargs[new] = kwargs.pop(old)
    if used:  # one warning per call, naming every old keyword it used
        warn(f"{name}({', '.join(f'{old}=...' for old, _ in used)})",
             f"{name}({', '.join(f'{new}=...' for _, new in used)})", stacklevel)
    return kwargs


def renamed(**old_to_new: str):
    """Decorator: a call that passes an old keyword is warned and passed on under the new one.

    >>> @renamed(length="formula_length")
    ... def f(*, formula_length=3):
    ...     return formula_length
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     f(length=2), str(w[0].message)
    (2, 'f(length=...) is deprecated and goes in the next release: use f(formula_length=...)')
    """
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            return fn(*args, **_rename(fn.__name__, kwargs, old_to_new, 4))
        return call
    return wrap


def _old_signature(spec: str) -> inspect.Signature:
    """"a, b, c=None" as a signature: names, each optionally defaulting to None (all old orders need)."""
    params = []
    for item in (s.strip() for s in spec.split(",")):
        name, _, default = item.partition("=")
        if default not in ("", "None"):
            raise ValueError(f"an old order's defaults can only be None, got {item!r}")
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=None if default else inspect.Parameter.empty))
    return inspect.Signature(params)


def _binds(signature: inspect.Signature, args, kwargs) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def reordered(old: str, marks: dict, **old_to_new: str):
    """Decorator: a call in the function's old positional order `old` ("model, images, dissection,
    layer") is warned and passed on in the new one; old keyword names (old_to_new) as `renamed`.

    A call is in the old order when an argument it passes by position is of the type its old
    position marks ({2: Dissection}: the third argument is a Dissection, where the new order has
    the images; a mark is a type, a tuple of types or a predicate), or when it binds only to the
    old order (a keyword given for the slot a positional argument now fills, the old default of a
    now required argument). Options after the old positions go on as keywords, unchanged.

    >>> @reordered("data, name", {0: list})
    ... def f(name, data):
    ...     return name, data
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     f("a", [1]), f([1], "a"), str(w[0].message)
    (('a', [1]), ('a', [1]), 'f(data, name) is deprecated and goes in the next release: use f(name, data)')
    """
    before = _old_signature(old)

    def wrap(fn):
        now = inspect.signature(fn)
        positional = [p.name for p in now.parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        extra = [p for p in now.parameters.values()
                 if p.name not in before.parameters and p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
        then = before.replace(parameters=[*before.parameters.values(), *extra])

        def is_old(args, kwargs) -> bool:
            for i, mark in marks.items():
                if i < len(args):
                    hit = isinstance(args[i], mark) if isinstance(mark, (type, tuple)) else mark(args[i])
                    if hit:
                        return True
            return not _binds(now, args, kwargs) and _binds(then, args, kwargs)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            kwargs = _rename(fn.__name__, kwargs, old_to_new, 4)
            if not is_old(args, kwargs):
                return fn(*args, **kwargs)
            warn(f"{fn.__name__}({old})", f"{fn.__name__}({', '.join(positional)})")
            bound = then.bind(*args, **kwargs)
            given = set(bound.arguments)
            bound.apply_defaults()
            named = {}
            for key, value in bound.arguments.items():
                if key not in given and key in now.parameters and now.parameters[key].default is not now.empty:
                    continue  # an old default (None) must not override the new one
                named.update(value if then.parameters[key].kind == inspect.Parameter.VAR_KEYWORD else {key: value})
            return fn(**named)
        return call
    return wrap

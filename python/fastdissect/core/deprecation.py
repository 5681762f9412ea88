"""Old argument names that keep working for one release (docs/api.md, "Old names")."""

from __future__ import annotations

import functools
import warnings


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} is deprecated and goes in the next release: use {new}", DeprecationWarning,
                  stacklevel=stacklevel)


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
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old}= (its old name) and {new}=")
                    warn(f"{fn.__name__}({old}=...)", f"{fn.__name__}({new}=...)")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return call
    return wrap

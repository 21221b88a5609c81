"""Error types shared by every package.

`SelfloopError` carries a one-line message meant for a person; the CLI prints it as-is and exits
non-zero. Lower packages (agent, judges, tuners) raise it; loop never needs to wrap it.
"""


class SelfloopError(Exception):
    """A problem the user can fix (bad input, missing file, unreachable endpoint...)."""


class ModelResolutionError(SelfloopError):
    """A model spec that cannot be turned into a loadable model."""


class UnsupportedError(SelfloopError):
    """The selected backend cannot do what was asked (say, score a continuation over HTTP)."""


def describe_validation(exc: Exception, prefix: str = "") -> str:
    """One line for a pydantic ValidationError: `key.sub: what is wrong` (first error, + N more)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    errs = errors()
    if not errs:
        return str(exc)
    first = errs[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    where = f"{prefix}.{where}" if prefix and where else prefix or where
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"

"""The one exception type for user mistakes.

A `HuginnError` message is a single line that says what is wrong and how to fix it. The command
line prints it without a traceback; library callers can catch it (it is a `ValueError`).
"""


class HuginnError(ValueError):
    """A user mistake: bad input, bad config, bad file. The message is one actionable line."""


def one_of(kind: str, value: object, valid) -> HuginnError:
    """The standard 'unknown X' error, listing the valid choices."""
    choices = ", ".join(str(v) for v in valid)
    return HuginnError(f"unknown {kind} {value!r}; valid: {choices}")

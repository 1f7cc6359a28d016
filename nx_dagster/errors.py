"""The one error type users see for bad input: it names the input and the fix."""

import os


class NxInputError(ValueError):
    """Bad user input. The message says which input is wrong and what to do about it."""

    def __init__(self, what: str, problem: str, fix: str):
        self.what, self.problem, self.fix = what, problem, fix
        super().__init__(f"{what}: {problem}. Fix: {fix}")

    @classmethod
    def kinds(cls) -> set[str]:
        """The class names of this error and its subclasses (to find one in a Dagster event log)."""
        out, todo = set(), [cls]
        while todo:
            c = todo.pop()
            out.add(c.__name__)
            todo.extend(c.__subclasses__())
        return out


def env_seconds(name: str, default: float, allow_zero: bool = False) -> float:
    """The environment variable `name` as a number of seconds (`default` when unset or blank). Raises
    NxInputError naming the variable when it is not a number, negative, or zero without `allow_zero`."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        value = -1.0
    if not (value >= 0 if allow_zero else value > 0):
        raise NxInputError(f"{name} {raw!r}", f"is not a number of seconds {'>=' if allow_zero else '>'} 0",
                           f"set it to e.g. {default:g} (the default), or unset it")
    return value

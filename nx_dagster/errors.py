"""The one error type users see for bad input: it names the input and the fix."""


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

"""The one error type users see for bad input: it names the input and the fix."""


class NxInputError(ValueError):
    """Bad user input. The message says which input is wrong and what to do about it."""

    def __init__(self, what: str, problem: str, fix: str):
        self.what, self.problem, self.fix = what, problem, fix
        super().__init__(f"{what}: {problem}. Fix: {fix}")

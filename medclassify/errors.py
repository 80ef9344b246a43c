"""Exceptions that the command line turns into exit codes."""


class InputError(Exception):
    """Bad user input (a manifest, an image, a config). The CLI exits with status 1.

    ``problems`` lists every problem found, not only the first, each as a short line.
    """

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)

    def __str__(self):
        lines = [self.args[0]]
        lines += [f"  - {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  … and {len(self.problems) - 20} more")
        return "\n".join(lines)


class UsageError(Exception):
    """Wrong use of the command line. The CLI exits with status 2."""

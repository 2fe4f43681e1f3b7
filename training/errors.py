"""The one error type the training job reports as a single line and exit status 2."""


class UsageError(ValueError):
    """A problem with the job's settings or data that the user can fix: `main` prints it as one line and exits
    with status 2 (argparse's status for bad usage), with no traceback. Bugs keep their tracebacks."""

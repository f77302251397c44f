"""The one exception type for user mistakes (bad paths, bad files, bad options).

The CLI turns it into a one-line message and exit code 2; library callers can catch it as a
ValueError.
"""


class UserError(ValueError):
    """A problem with what the user asked for or gave us; the message says expected vs found."""

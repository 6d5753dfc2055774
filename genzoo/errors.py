"""The one exception type for mistakes a user can make."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits 2."""

"""One exception type for bad input, so the CLI can print one clear line instead of a traceback."""


class ShepherdError(Exception):
    """Bad input from the user (file, line, key, model folder): the message names what and where."""

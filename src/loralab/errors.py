class LoralabError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits non-zero."""

import os
import sys


class LoralabError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits non-zero."""


def warn(message: str) -> None:
    """One `loralab: warning:` line on stderr: something that does not stop the work but changes what its
    result means. Said once, by the first process of a data-parallel run (RANK is set by torchrun and
    accelerate launch)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"loralab: warning: {message}", file=sys.stderr)

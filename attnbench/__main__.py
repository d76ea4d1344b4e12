"""``python -m attnbench``: the command line, with a Ctrl-C while it is still importing (torch,
the backends: the first seconds) one line and exit 130 rather than a traceback.

During the imports a Ctrl-C does not raise: a KeyboardInterrupt inside torch's import can abort
the process from C++ (``terminate called after throwing ... KeyboardInterrupt``) or, escaping a
dataclass's generated code, make the interpreter end by SIGINT whatever the exit code asked.
Nothing has run yet, so the process just says so and ends (``os._exit``: nothing to clean up).
"""

import os
import signal
import sys

_LINE = b"error: interrupted (Ctrl-C)\n"


def _interrupted_while_starting(signum=None, frame=None) -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        os.write(2, _LINE)
    except OSError:
        pass
    os._exit(130)


def main() -> None:
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # started with Ctrl-C ignored (a background job): keep it so
        previous = None
    else:
        try:
            signal.signal(signal.SIGINT, _interrupted_while_starting)
        except ValueError:  # not the main thread
            previous = None
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:  # raised by the imported code itself
        _interrupted_while_starting()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    cli_main()


if __name__ == "__main__":
    main()

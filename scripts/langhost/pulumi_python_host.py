"""Pulumi's own Python runners, as this project's toolchain starts them (docs/toolchain.md).

    pulumi_python_host.py program EXEC_SCRIPT ARGS...   the program, through pulumi-language-python-exec
    pulumi_python_host.py dynamic ARGS...               the dynamic-provider host, ``python -m pulumi.dynamic``

Both run unchanged but for two things:

* they exit once the process that started them is gone, so a SIGKILLed ``pulumi up`` leaves nothing running;
* a failure worded for the user (an exception with ``show_traceback = False``) reaches the engine as its message
  alone, not as a Python traceback; and the program does not add "Resource monitor has terminated" after the
  engine has already said which resource failed and stopped.
"""

import os
import runpy
import sys
import threading
import time
import traceback

MONITOR_GONE = "Resource monitor has terminated, shutting down"


def exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def quiet_user_errors() -> None:
    format_exc = traceback.format_exc

    def format_user_error(limit=None, chain=True):
        error = sys.exc_info()[1]
        if error is not None and getattr(error, "show_traceback", True) is False:
            return str(error)
        return format_exc(limit, chain)

    traceback.format_exc = format_user_error


def quiet_monitor_shutdown() -> None:
    import pulumi.log

    log_error = pulumi.log.error

    def error(msg, *args, **kwargs):
        if msg != MONITOR_GONE:
            log_error(msg, *args, **kwargs)

    pulumi.log.error = error


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    exit_with_parent()
    if mode == "dynamic":
        quiet_user_errors()
        # As `python -m pulumi.dynamic` would: the project directory (the working directory) comes first, so that
        # providers pickled by reference to the project's modules find them.
        sys.path.insert(0, os.getcwd())
        sys.argv = [sys.argv[0], *args]
        runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)
    elif mode == "program":
        quiet_monitor_shutdown()
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
    else:
        sys.exit(f"usage: {sys.argv[0]} program EXEC_SCRIPT ARGS... | dynamic ARGS...")


if __name__ == "__main__":
    main()

"""Training processes that do not outlive the worker process that started them.

The watchdog stops a hung task with SIGKILL (the only signal a wedged prefork child obeys).
Training started in a process group of its own (torchrun and its ranks, Axolotl) would then
run on, orphaned, holding the GPU. A child started with `child_env()` that calls
`exit_with_parent()` first gets a signal from the kernel when its parent dies
(PR_SET_PDEATHSIG, Linux; elsewhere a no-op):

    python -m worker.training.lifeline MODULE ARGS...    run MODULE as __main__, so bound

torchrun gets SIGTERM that way, and on SIGTERM it stops its ranks before it exits.
Standard library only: it also runs in the Axolotl environment.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PARENT_ENV = "TMDE_PARENT_PID"
PR_SET_PDEATHSIG = 1


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that should exit with this process."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def exit_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Ask the kernel for `sig` when the parent named by `child_env` dies."""
    parent = os.environ.pop(PARENT_ENV, None)  # popped: grandchildren have another parent
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(parent):  # it died before the prctl: nobody would send the signal
        os.kill(os.getpid(), sig)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m worker.training.lifeline MODULE [ARGS...]")
    exit_with_parent()
    sys.argv = argv
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])

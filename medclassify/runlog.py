"""Send a stage's output to its log file, including what C libraries write.

TensorFlow and HDF5 write warnings straight to file descriptors 1 and 2, past ``sys.stdout``;
redirecting the descriptors puts those lines in the rule's log too.
"""

import contextlib
import os
import signal
import sys
import threading
import time


@contextlib.contextmanager
def log_output(log_path):
    """Redirect stdout and stderr (Python and file-descriptor level) to ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", buffering=1, encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        old_streams = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] start", flush=True)
        try:
            with terminated_as_exit():
                yield
            print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] done", flush=True)
        except BaseException:
            import traceback

            traceback.print_exc(file=log)
            raise
        finally:
            log.flush()
            sys.stdout, sys.stderr = old_streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def terminated_as_exit():
    """Within the block, SIGTERM ends the process as ``SystemExit(143)``, so that clean-up runs.

    Slurm ends a job past its time limit, and Snakemake a job it cancels, with SIGTERM, which
    ends Python at once: the writes it interrupted left their temporary files (a partial model
    or checkpoint of hundreds of MB each time). Only in the main thread, where Python can take
    signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_sigterm(signum, frame):
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] terminated (SIGTERM)", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def default_sigterm():
    """Give SIGTERM its default action again: for the worker processes a stage forks, which would
    otherwise each print that they were terminated, and end as the stage does anyway."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

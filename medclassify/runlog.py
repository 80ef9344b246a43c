"""Send a stage's output to its log file, including what C libraries write.

TensorFlow and HDF5 write warnings straight to file descriptors 1 and 2, past ``sys.stdout``;
redirecting the descriptors puts those lines in the rule's log too.
"""

import contextlib
import os
import sys
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

"""Device policy for training: threads, memory allocator, mixed precision, XLA, GPU memory growth,
multi-GPU.

The decisions are pure functions of the config values and the visible devices, so they are
tested on CPU; :func:`configure_devices` applies them. TensorFlow sees only the GPUs in
``CUDA_VISIBLE_DEVICES`` (set by Slurm, or by the user on a workstation: the workstation
profile only counts GPUs), so a job never touches GPUs it was not given; nothing here widens
that set. TensorFlow is imported by the functions that use it: the decisions, and the malloc
setting, cost no TensorFlow import (tests run them in fresh processes).
"""

import ctypes
import functools
import os

# glibc's mallopt parameter number for M_TOP_PAD (malloc.h).
M_TOP_PAD = -2
# Fine-tuning ResNet-18 on BreastMNIST, 2-core KVM machine: a median step took 1.6-1.8 s with
# glibc's default, 1.25 s with 64 MiB and 1.05-1.16 s with 256 MiB; peak RSS grew by 45 MB.
MALLOC_TOP_PAD_BYTES = 256 << 20


def mixed_precision_policy(setting, n_gpus):
    """Keras dtype policy: ``mixed_float16`` for ``on``, or ``auto`` with a GPU; else float32."""
    if setting == "on" or (setting == "auto" and n_gpus > 0):
        return "mixed_float16"
    return "float32"


def use_jit(setting, n_gpus, deterministic):
    """Whether to compile the train step with XLA: ``on``, or ``auto`` with a GPU and no op determinism.

    Keras compiles nothing with XLA while TensorFlow's op determinism is on: ``Model.compile`` turns
    ``jit_compile`` back off (``keras.src.trainers.trainer.model_supports_jit``). So ``auto`` asks
    for XLA only where it can happen, and :func:`medclassify.config.run_config` refuses ``on``
    together with ``train.deterministic``.
    """
    return setting == "on" or (setting == "auto" and n_gpus > 0 and not deterministic)


def strategy_kind(n_gpus):
    """``mirrored`` (one replica per GPU) when more than one GPU is visible, else ``default``."""
    return "mirrored" if n_gpus > 1 else "default"


def visible_gpu_ids(environ=None):
    """The GPU ids the job was given through CUDA_VISIBLE_DEVICES; None when it is unset."""
    environ = os.environ if environ is None else environ
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip() and part.strip() != "-1"]


def set_threads(threads):
    """Use ``threads`` CPU threads for TensorFlow ops (intra-op) and op scheduling (inter-op).

    Must run before TensorFlow executes its first op; later it raises RuntimeError, which is
    ignored (the threads were already fixed, e.g. by an earlier stage in the same process).
    """
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(threads))))
    except RuntimeError:
        pass


def keep_freed_memory(pad_bytes=MALLOC_TOP_PAD_BYTES):
    """Let glibc's malloc keep up to ``pad_bytes`` of freed memory at the top of each heap.

    TensorFlow on CPU frees its activations after every step and allocates them again for the
    next. By default glibc hands the freed top of a heap back to the kernel at once, and takes it
    back with fresh zeroed pages a moment later. On a 2-core KVM machine a 4-epoch fine-tune of
    BreastMNIST spent 51 s of its 140 s of CPU in the kernel; with the pad 27 s of 110 s, and it
    finished in 79 s instead of 103 s with the same history. Returns whether the setting took
    (False where the C library has no ``mallopt``, e.g. musl or macOS, which need nothing here).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TOP_PAD, int(pad_bytes)))


def configure_inference(threads=None):
    """Device policy for evaluation and prediction: CPU threads, malloc, GPU memory on demand.

    Without memory growth TensorFlow claims the whole memory of every visible GPU, which would
    starve a training job that Snakemake runs beside an evaluation. Returns the visible GPUs.
    """
    import tensorflow as tf

    set_threads(threads)
    keep_freed_memory()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised; growth was set then
    return gpus


def configure_devices(train_options, threads=None):
    """Apply the device policy; return ``(strategy, jit_compile, policy_name, n_gpus)``."""
    import keras
    import tensorflow as tf

    gpus = configure_inference(threads)
    policy = mixed_precision_policy(train_options["mixed_precision"], len(gpus))
    keras.mixed_precision.set_global_policy(policy)
    jit = use_jit(train_options["jit_compile"], len(gpus), bool(train_options["deterministic"]))
    strategy = mirrored_strategy() if strategy_kind(len(gpus)) == "mirrored" else tf.distribute.get_strategy()
    return strategy, jit, policy, len(gpus)


@functools.cache
def mirrored_strategy():
    """The process's one MirroredStrategy over the visible GPUs.

    Every MirroredStrategy numbers its all-reduce operations from the same keys, and TensorFlow
    remembers each one's tensor shape for the process: a second strategy (the fine-tune stage
    after the head's, in one script such as bench/accuracy.py) aborted with "Shape mismatch in
    the collective instance 100" once its gradients differed from the first one's.
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()

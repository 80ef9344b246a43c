"""Epoch checkpoints that let a killed training stage resume where it stopped.

Keras and NumPy only, no TensorFlow: the arrays are the model's and the optimizer's variables
under any Keras backend and dtype policy.
"""

import json
import shutil
from pathlib import Path

import keras
import numpy as np

from .atomic import atomic_path, atomic_write_json

STATE_VERSION = 5


class StageCheckpoint:
    """The files in ``checkpoints/`` that let a killed stage resume where it stopped.

    ``epoch-<n>.npz`` holds the model's variables, the optimizer's (its step counter included)
    and, with weight averaging, the training weights; ``best-<n>.npz`` the model's variables at the
    epoch the stage keeps so far (``select_epoch``: best validation AUC or lowest loss);
    ``state.json``, written last, names both files. The arrays go back
    into the model that the resumed stage builds and compiles as the first run did (the state's
    fingerprint holds every option that decides it), so they need no model file. Writing them
    took 0.13-0.18 s an epoch for the BreastMNIST ResNet-18 on 2 CPU cores, against 0.42-0.98 s
    for ``model.save`` and ``save_weights``: a tenth of an epoch there, and several whole epochs
    on an H100, which trains the 546 images at about 10,000 images/s (bench/mixed_precision.py).
    """

    def __init__(self, out_dir):
        self.dir = Path(out_dir) / "checkpoints"
        self.state_path = self.dir / "state.json"

    def load_state(self, fingerprint):
        """The saved state when it belongs to a run with the same ``fingerprint``; else None."""
        if not self.state_path.exists():
            return None
        state = json.loads(self.state_path.read_text(encoding="utf-8"))
        if state.get("version") != STATE_VERSION:
            print(f"checkpoint in {self.dir} is of another checkpoint format (version {state.get('version')}, "
                  f"now {STATE_VERSION}); starting over", flush=True)
            return None
        if not (self.dir / str(state.get("checkpoint_file", ""))).is_file():
            return None
        if state.get("fingerprint") != fingerprint:
            print(f"checkpoint in {self.dir} is from other options, data or code; starting over", flush=True)
            return None
        if state.get("complete"):
            # A finished stage that runs again was forced or its code changed: train anew.
            print(f"checkpoint in {self.dir} is of a finished run; starting over", flush=True)
            return None
        return state

    def mark_complete(self, state):
        """Record that the stage finished, so that a later run trains anew instead of resuming."""
        state["complete"] = True
        if self.dir.exists():
            atomic_write_json(self.state_path, state)

    def save(self, model, state, best_improved, training_weights=None):
        """Write the epoch's arrays, the best weights (when ``best_improved``) and the state, last, as the commit point.

        Each epoch gets its own file, and so do the best weights, both named in the state, so that a
        kill at any moment leaves a state and arrays of the same epoch; older files go once the state
        is written. (Best weights under one name would be those of the epoch the kill interrupted,
        which a resumed run that scores it lower would keep.) With weight averaging the model holds the average, and ``training_weights`` are the
        weights that training continues from.
        """
        path = self.dir / f"epoch-{state['epoch']:04d}.npz"
        arrays = {**_named("model", model.weights), **_named("optimizer", model.optimizer.variables)}
        if training_weights is not None:
            arrays.update(_named("training", training_weights))
        _save_arrays(path, arrays)
        if best_improved:
            best = self.dir / f"best-{state['epoch']:04d}.npz"
            _save_arrays(best, _named("model", model.weights))
            state["best_file"] = best.name
        state["checkpoint_file"] = path.name
        atomic_write_json(self.state_path, state)
        named = {state["checkpoint_file"], state.get("best_file")}
        for stale in self._array_files():
            if stale.name not in named:
                stale.unlink()

    def restore(self, model, state):
        """Put the state's epoch into ``model`` (built and compiled); None if the arrays do not fit it.

        Returns the saved training weights (weight averaging) as a list, [] without them.
        """
        with np.load(self.dir / state["checkpoint_file"]) as saved:
            weights, optimizer, training = (_unnamed(saved, part) for part in ("model", "optimizer", "training"))
        # Both checked before either is assigned, so that a misfit leaves the new model as built.
        if len(weights) != len(model.weights) or not _assign([*model.weights, *model.optimizer.variables],
                                                             weights + optimizer):
            return None
        return training

    def has_best(self, state):
        """Whether the best weights that ``state`` names were written."""
        return bool(state.get("best_file")) and (self.dir / state["best_file"]).is_file()

    def restore_best(self, model, state):
        """Put the weights of the best epoch that ``state`` names into ``model``."""
        path = self.dir / state["best_file"]
        with np.load(path) as saved:
            if not _assign(model.weights, _unnamed(saved, "model")):
                raise RuntimeError(f"{path} does not fit the model it was saved from")

    def clear(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove_files(self):
        """Delete this stage's state and arrays, and nothing else in the folder (an ensemble keeps
        its ``ensemble.json`` there)."""
        for path in [self.state_path, *self._array_files()]:
            path.unlink(missing_ok=True)

    def _array_files(self):
        return [*self.dir.glob("epoch-*"), *self.dir.glob("best-*")]


def _named(prefix, values):
    # Zero-padded, so that the names sort in the variables' order.
    return {f"{prefix}_{k:05d}": keras.ops.convert_to_numpy(v) for k, v in enumerate(values)}


def _unnamed(saved, prefix):
    return [saved[name] for name in sorted(saved.files) if name.startswith(f"{prefix}_")]


def _assign(variables, arrays):
    """Assign ``arrays`` to ``variables`` if they match one to one in shape; report whether they did."""
    variables = list(variables)
    if len(variables) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays)):
        return False
    for variable, value in zip(variables, arrays):
        variable.assign(value)
    return True


def _save_arrays(path, arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".partial.npz") as tmp:
        np.savez(tmp, **arrays)

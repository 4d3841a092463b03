"""The one way lpo runs a SavedModel: a signature in a private graph and session (TF1 loader)."""
from __future__ import annotations

import logging
import os

import numpy as np

from lpo.errors import ModelFormatError
from lpo.options import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)


class SignatureRunner:
    """Loads a SavedModel into its own ``tf.Graph``/``Session`` and runs one signature.

    The MetaGraph is chosen by lpo's one tag rule (:func:`lpo.core.savedmodel.select_meta_graph`).

    * ``run(feed)``: ``{input name: array}`` -> ``{output name: array}`` (extra inputs ignored);
    * ``predict(data, batch_size)``: the same over all rows of ``data``, in chunks;
    * ``call(*arrays)``: the fast path (a session callable) for arrays in ``input_names`` order,
      returning the outputs in ``output_names`` order (latency measurement);
    * ``fetch(feed, tensor_names)``: arbitrary graph tensors (calibration);
    * ``trace(feed)``: one FULL_TRACE run's ``RunMetadata`` (``lpo profile``).
    """

    def __init__(self, model_path, tags=None, signature: str = DEFAULT_SIGNATURE, *, session_config=None,
                 input_names=None):
        import tensorflow as tf

        from lpo.core.deeprec import check_runnable
        from lpo.core.savedmodel import read_saved_model, select_meta_graph

        self.path = os.fspath(model_path)
        mg = select_meta_graph(read_saved_model(self.path), tags)
        check_runnable(mg, self.path, "running its signature")
        from lpo.target import check_runnable as check_target

        check_target(self.path)  # a oneDNN-only model where oneDNN is off: say so, before TF fails
        load_tags = sorted(mg.meta_info_def.tags)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config)
        try:
            with self.graph.as_default():
                mg = tf.compat.v1.saved_model.loader.load(self.session, load_tags, self.path)
        except Exception as e:  # noqa: BLE001 - TF raises many kinds
            self.session.close()
            raise ModelFormatError(f"cannot load SavedModel {self.path}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        if signature not in mg.signature_def:
            self.session.close()
            raise ModelFormatError(
                f"{self.path} has no signature {signature!r}; available: {sorted(mg.signature_def)}")
        sig = mg.signature_def[signature]
        self.inputs = {k: v.name for k, v in sig.inputs.items()}
        self.outputs = {k: v.name for k, v in sig.outputs.items()}
        self.input_names = sorted(self.inputs) if input_names is None else list(input_names)
        self.output_names = sorted(self.outputs)
        self._call = self.session.make_callable(
            [self.outputs[n] for n in self.output_names], feed_list=[self.inputs[n] for n in self.input_names])

    def feed_dict(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map signature input names to graph tensor names."""
        return {self.inputs[k]: v for k, v in feed.items() if k in self.inputs}

    def call(self, *arrays) -> list:
        """Run one batch given as arrays in ``input_names`` order; outputs in ``output_names`` order."""
        return self._guard(self._call, *arrays)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on one batch."""
        vals = self._guard(self.session.run, [self.outputs[n] for n in self.output_names], self.feed_dict(feed))
        return dict(zip(self.output_names, vals))

    def predict(self, data: dict[str, np.ndarray], batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Run the signature over every row of ``data`` in batches; return ``{output name: array}``."""
        n = len(data[self.input_names[0]]) if self.input_names else 0
        parts: dict[str, list] = {name: [] for name in self.output_names}
        for s in range(0, n, batch_size):
            for name, v in zip(self.output_names, self.call(*[data[k][s:s + batch_size] for k in self.input_names])):
                parts[name].append(np.asarray(v))
        return {name: np.concatenate(v, axis=0) if v else np.zeros((0,), np.float32) for name, v in parts.items()}

    def trace(self, feed: dict[str, np.ndarray]):
        """Run the signature on one batch with FULL_TRACE; return its ``RunMetadata`` (step stats per node)."""
        import tensorflow as tf

        v1 = tf.compat.v1
        md = v1.RunMetadata()
        self._guard(self.session.run, [self.outputs[n] for n in self.output_names], self.feed_dict(feed),
                    v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE), md)
        return md

    def fetch(self, feed: dict[str, np.ndarray], tensor_names: list[str]) -> list[np.ndarray]:
        """Evaluate graph tensors ``tensor_names`` on one batch."""
        return self._guard(self.session.run, list(tensor_names), self.feed_dict(feed))

    def _guard(self, fn, *args):
        """Run ``fn``; a oneDNN-only kernel that did not run becomes a RequirementError, not TF's raw error."""
        import tensorflow as tf

        try:
            return fn(*args)
        except tf.errors.OpError as e:
            from lpo.target import translate_run_error

            err = translate_run_error(e, self.path)
            if err is e:
                raise
            raise err from e

    def close(self) -> None:
        """Release the session."""
        self.session.close()

    def __enter__(self) -> "SignatureRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Run a TF1-graph SavedModel's signature in a private graph and session."""
from __future__ import annotations

import logging

import numpy as np

from lpo.errors import ModelFormatError

log = logging.getLogger(__name__)


class SignatureRunner:
    """Loads a SavedModel into its own ``tf.Graph``/``Session`` and runs one signature.

    ``run(feed)`` takes ``{input name: array}`` and returns ``{output name: array}``;
    ``fetch(feed, tensor_names)`` returns arbitrary graph tensors (used for calibration).
    """

    def __init__(self, model_path: str, tags=("serve",), signature: str = "serving_default"):
        import tensorflow as tf

        from lpo.core.deeprec import check_runnable
        from lpo.core.savedmodel import read_saved_model, select_meta_graph

        check_runnable(select_meta_graph(read_saved_model(model_path), tags), model_path, "running its signature")
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            mg = tf.compat.v1.saved_model.loader.load(self.session, list(tags), model_path)
        if signature not in mg.signature_def:
            raise ModelFormatError(
                f"{model_path} has no signature {signature!r}; available: {sorted(mg.signature_def)}")
        sig = mg.signature_def[signature]
        self.inputs = {k: v.name for k, v in sig.inputs.items()}
        self.outputs = {k: v.name for k, v in sig.outputs.items()}

    def feed_dict(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map signature input names to graph tensor names."""
        return {self.inputs[k]: v for k, v in feed.items() if k in self.inputs}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on one batch."""
        names = sorted(self.outputs)
        vals = self.session.run([self.outputs[n] for n in names], self.feed_dict(feed))
        return dict(zip(names, vals))

    def fetch(self, feed: dict[str, np.ndarray], tensor_names: list[str]) -> list[np.ndarray]:
        """Evaluate graph tensors ``tensor_names`` on one batch."""
        return self.session.run(list(tensor_names), self.feed_dict(feed))

    def close(self) -> None:
        """Release the session."""
        self.session.close()

    def __enter__(self) -> "SignatureRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

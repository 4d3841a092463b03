"""The refresh step as an Airflow operator: the optimized model rebuilt with a new FP32 checkpoint."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from airflow.sdk import BaseOperator

from lpo.errors import ConfigError
from lpo.operators.common import fail_fast, make_parent, path_arg, quiet
from lpo.orchestration.steps import flag, jsonable, optional


class LpoRefreshOperator(BaseOperator):
    """Rebuild an optimized model with a new FP32 checkpoint (``lpo.refresh``).

    Args:
        opt_model_path: optimized SavedModel (has the plan).
        ckpt_prefix: new FP32 checkpoint prefix.
        save_path: output SavedModel directory.
        fp32_model_path: optional FP32 SavedModel; with ``reference_path``, also writes
            the FP32 reference (its graph + ``ckpt_prefix``) to validate against.
        reference_path: where to write that reference.
        overwrite: replace a non-empty ``save_path`` (default True).
    """

    template_fields: Sequence[str] = ("opt_model_path", "ckpt_prefix", "save_path", "fp32_model_path",
                                      "reference_path", "overwrite")
    ui_color = "#ece4f7"

    def __init__(self, *, opt_model_path: str, ckpt_prefix: str, save_path: str,
                 fp32_model_path: Optional[str] = None, reference_path: Optional[str] = None,
                 overwrite: Any = True, **kwargs):
        super().__init__(**kwargs)
        self.opt_model_path = opt_model_path
        self.ckpt_prefix = ckpt_prefix
        self.save_path = save_path
        self.fp32_model_path = fp32_model_path
        self.reference_path = reference_path
        self.overwrite = overwrite

    @fail_fast
    @quiet
    def execute(self, context) -> dict:
        import lpo
        from lpo.orchestration.artifacts import fp32_model_with_checkpoint

        opt_model = path_arg("opt_model_path", self.opt_model_path, must_exist=True)
        ckpt = path_arg("ckpt_prefix", self.ckpt_prefix)
        if not os.path.exists(ckpt + ".index"):
            raise ConfigError(f"ckpt_prefix: checkpoint not found ({ckpt}.index does not exist)")
        save = path_arg("save_path", self.save_path)
        fp32, ref = optional(self.fp32_model_path), optional(self.reference_path)
        if (fp32 is None) != (ref is None):
            raise ConfigError("fp32_model_path and reference_path go together")
        make_parent("save_path", save)
        result = lpo.refresh(opt_model, ckpt, save, overwrite=flag(self.overwrite), quiet=True)
        out = jsonable(result.to_dict())
        if fp32 is not None:
            make_parent("reference_path", ref)
            out["reference_path"] = fp32_model_with_checkpoint(path_arg("fp32_model_path", fp32, must_exist=True),
                                                               ckpt, ref, overwrite=flag(self.overwrite))
        return out

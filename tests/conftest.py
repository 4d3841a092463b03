"""Shared pytest fixtures: cached sample SavedModels (built once, reused)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _emulate_host():
    """``LPO_HOST_TARGET=<preset>``: run TensorFlow with that CPU's oneDNN setting (before TF is imported).

    ``target='host'`` then gives the preset's forms (lpo/target.py), and the oneDNN kernels those
    forms use really run: every x86 CPU runs them, only at another speed. Subprocesses inherit it.
    """
    from lpo import options
    from lpo.target import ENV, emulated_host

    name = emulated_host()
    if name and name in options.TARGETS:
        os.environ.setdefault(ENV, "1" if options.TARGETS[name]["onednn"] else "0")


_emulate_host()

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CACHE = os.environ.get("LPO_CACHE_DIR") or os.path.join(REPO_ROOT, ".lpo-cache")


def _sample(variant):
    from lpo.samples.tf1 import cached_sample

    return cached_sample(variant, cache_dir=SAMPLE_CACHE)


@pytest.fixture(scope="session")
def sample_resource():
    """SampleModel with resource variables (ResourceGather lookups)."""
    return _sample("resource")


@pytest.fixture(scope="session")
def sample_ref():
    """SampleModel with ref variables (VariableV2 -> Identity -> SparseSegmentMean)."""
    return _sample("ref")


@pytest.fixture(scope="session")
def sample_partitioned():
    """SampleModel with 2-way partitioned embedding tables."""
    return _sample("partitioned")


@pytest.fixture(scope="session")
def sample_ref_gather():
    """SampleModel with ref variables and the pre-TF-2.14 VariableV2 -> Identity -> GatherV2 lookup."""
    from lpo.samples.tf1 import cached_sample

    return cached_sample("ref", cache_dir=SAMPLE_CACHE, lookup="gather")


@pytest.fixture(scope="session")
def sample_keras():
    """Keras 3 DLRM-like model exported with ``model.export`` (a TF2 object-graph SavedModel)."""
    from lpo.samples.keras_models import cached_keras_sample

    return cached_keras_sample(cache_dir=SAMPLE_CACHE)


@pytest.fixture(scope="session")
def sample_dcn():
    """Keras 3 DCN-like model (low-rank cross layers: MatMul -> MatMul -> AddV2) exported with ``model.export``."""
    from lpo.samples.keras_models import cached_dcn_sample

    return cached_dcn_sample(cache_dir=SAMPLE_CACHE)


@pytest.fixture(scope="module")
def optimized_sample(tmp_path_factory):
    """``get(sample, **kw)``: the path of ``lpo.optimize(sample, calib_file=its calibration rows, **kw)``,
    optimized once per (sample, options) in a module."""
    import json

    import lpo

    work, cache = tmp_path_factory.mktemp("optimized"), {}

    def get(sample, **kw):
        key = (sample.model_path, json.dumps(kw, sort_keys=True))
        if key not in cache:
            out = work / f"opt-{len(cache)}"
            lpo.optimize(sample.model_path, str(out), calib_file=sample.calib_path, quiet=True, **kw)
            cache[key] = str(out)
        return cache[key]

    return get


#: Fixtures that load a trained sample model: a test using one (even indirectly) optimizes or
#: serves a real SavedModel and takes seconds, so it is an integration test, marked slow.
SAMPLE_FIXTURES = {"sample_resource", "sample_ref", "sample_partitioned", "sample_ref_gather", "sample_keras",
                   "sample_dcn"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a sample-model fixture ``slow`` (``-m "not slow"`` = the fast unit tests)."""
    for item in items:
        if SAMPLE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

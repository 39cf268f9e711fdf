import os

# Nothing in the test suite may wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the DVC pipelines of test_dvc_pipeline.py run in three background processes meanwhile,
# and spinning OpenMP threads on an oversubscribed 2-core machine only burn CPU.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_flux_folder(tmp_path_factory):
    from tiny import write_tiny_flux_folder

    return write_tiny_flux_folder(tmp_path_factory.mktemp("flux") / "FLUX.1-tiny")


def pytest_collection_modifyitems(session, config, items):
    """The DVC pipeline tests go last, and their pipelines start now, in the background: they mostly
    wait on process start-up (each stage imports torch and diffusers), so the unit tests run meanwhile."""
    dvc = [i for i in items if i.path.name == "test_dvc_pipeline.py"]
    if not dvc:
        return
    items[:] = [i for i in items if i.path.name != "test_dvc_pipeline.py"] + dvc
    import tempfile
    from pathlib import Path

    from test_dvc_pipeline import start_runs

    config._fastflux_dvc = start_runs(Path(tempfile.mkdtemp(prefix="fastflux-dvc-")))


def pytest_sessionfinish(session, exitstatus):
    import shutil

    handle = getattr(session.config, "_fastflux_dvc", None)
    if handle is not None:
        for _, proc in handle["started"].values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(handle["root"], ignore_errors=True)

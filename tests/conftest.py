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


# Tests that need the finished micro pipelines, in the order they run (after every unit test): the
# bad-input and crash tests copy repo A before test_dvc_pipeline.py changes it.
PIPELINE_TESTS = ("test_bad_input.py", "test_crash_safety.py", "test_dvc_pipeline.py")


def pytest_collection_modifyitems(session, config, items):
    """The pipeline tests go last, and their pipelines start now, in the background: they mostly
    wait on process start-up (each stage imports torch and diffusers), so the unit tests run meanwhile."""
    late = sorted((i for i in items if i.path.name in PIPELINE_TESTS), key=lambda i: PIPELINE_TESTS.index(i.path.name))
    if not late:
        return
    items[:] = [i for i in items if i.path.name not in PIPELINE_TESTS] + late
    if os.environ.get("FASTFLUX_TEST_PIPELINES"):
        return
    import tempfile
    from pathlib import Path

    from test_dvc_pipeline import start_runs

    config._fastflux_dvc = start_runs(Path(tempfile.mkdtemp(prefix="fastflux-dvc-")))


@pytest.fixture(scope="session")
def runs(request):
    """Repos A, B and C after their full `dvc repro` (started at collection, or here when run alone)."""
    from pathlib import Path

    from test_dvc_pipeline import start_b, start_runs, wait_runs

    done = os.environ.get("FASTFLUX_TEST_PIPELINES")
    if done:  # a folder holding finished copies A, B, C (to iterate on these tests without re-running them)
        out = {"A": Path(done) / "A", "B": Path(done) / "B", "C": Path(done) / "C",
               "log_a": Path(done) / "params-A", "log_c": Path(done) / "params-C"}
        handle = {}
    else:
        handle = getattr(request.config, "_fastflux_dvc", None)
        if handle is None:
            import tempfile

            handle = request.config._fastflux_dvc = start_runs(Path(tempfile.mkdtemp(prefix="fastflux-dvc-")))
        out = wait_runs(handle)
    # B's experiments (the report's queued run, a warm exp run) run in the background from now on
    out["b"], out["b_before"] = handle["b"] = start_b(out["B"])
    return out


def pytest_sessionfinish(session, exitstatus):
    import shutil

    handle = getattr(session.config, "_fastflux_dvc", None)
    if handle is not None:
        if "b" in handle:  # let DVC finish in B before its folder goes
            handle["b"][0].exception()
        for _, proc in handle["started"].values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(handle["root"], ignore_errors=True)

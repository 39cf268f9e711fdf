import os

# Nothing in the test suite may wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy's and scipy's OpenBLAS on one thread too (read when numpy loads, after this): beside the
# background pipelines its second thread only spins — the FID jackknife test takes twice as long with it
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from suite_timeline import mark  # noqa: E402

# One thread: the DVC pipelines of test_dvc_pipeline.py run in two background processes meanwhile,
# and spinning OpenMP threads on an oversubscribed 2-core machine only burn CPU.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _torch_deterministic_mode_put_back():
    """A test that runs a stage in-process (``stage.run_stage``) switches torch's deterministic mode on
    for the whole process, and in it every ``torch.empty`` is filled: building a published model on the
    meta device (``init_empty_weights`` makes each parameter on the CPU first) then took 20–58 s instead
    of 0.1 (tests/test_layouts.py after tests/test_io.py). Each test gets the mode it started with back."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture(scope="session")
def tiny_flux_folder(tmp_path_factory):
    from tiny import write_tiny_flux_folder

    return write_tiny_flux_folder(tmp_path_factory.mktemp("flux") / "FLUX.1-tiny")


@pytest.fixture(scope="session")
def tiny_flux2_folder(tmp_path_factory):
    from tiny import write_tiny_flux2_folder

    return write_tiny_flux2_folder(tmp_path_factory.mktemp("flux2") / "FLUX.2-klein-tiny")


@pytest.fixture(scope="session")
def tiny_flux2_dev_folder(tmp_path_factory):
    from tiny import write_tiny_flux2_dev_folder

    return write_tiny_flux2_dev_folder(tmp_path_factory.mktemp("flux2dev") / "FLUX.2-dev-tiny")


@pytest.fixture(scope="session")
def tiny_qwenimage_folder(tmp_path_factory):
    from tiny import write_tiny_qwenimage_folder

    return write_tiny_qwenimage_folder(tmp_path_factory.mktemp("qwenimage") / "Qwen-Image-tiny")


@pytest.fixture(scope="session")
def tiny_sd3_folder(tmp_path_factory):
    from tiny import write_tiny_sd3_folder

    return write_tiny_sd3_folder(tmp_path_factory.mktemp("sd3") / "SD3-tiny")


@pytest.fixture(scope="session")
def _chain_built(tmp_path_factory):
    from chain_fixture import build_chain

    return build_chain(tmp_path_factory)


@pytest.fixture
def chain(_chain_built, monkeypatch):
    """The chain of tests/chain_fixture.py (built once), its folder the working directory for the test."""
    monkeypatch.chdir(_chain_built["root"])
    return _chain_built


# Tests that need the finished micro pipelines, in the order they run (after every unit test): the
# bad-input and crash tests copy repo A before test_dvc_pipeline.py changes it.
PIPELINE_TESTS = ("test_bad_input.py", "test_crash_safety.py", "test_distributed_stages.py", "test_dvc_pipeline.py")


def pytest_collection(session):
    mark("collection start")


_first_pipeline_test_marked = False


def pytest_runtest_logstart(nodeid, location):
    """The timeline's mark of the unit tests' end: the first pipeline test starts (and waits for A)."""
    global _first_pipeline_test_marked
    if not _first_pipeline_test_marked and os.path.basename(location[0]) in PIPELINE_TESTS:
        _first_pipeline_test_marked = True
        mark(f"first pipeline test start {nodeid}")


@pytest.hookimpl(trylast=True)  # after -k/-m/--deselect: B starts only when a test that runs needs it
def pytest_collection_modifyitems(session, config, items):
    """The pipeline tests go last, and their pipelines start now, in the background: they mostly
    wait on process start-up (each stage imports torch and diffusers), so the unit tests run meanwhile.
    B's chain starts the moment A is done, so it too runs beside the unit tests."""
    late = sorted((i for i in items if i.path.name in PIPELINE_TESTS), key=lambda i: PIPELINE_TESTS.index(i.path.name))
    if not late:
        return
    items[:] = [i for i in items if i.path.name not in PIPELINE_TESTS] + late
    if os.environ.get("FASTFLUX_TEST_PIPELINES"):
        return
    _start(config, b=any("runs" in i.fixturenames for i in late))  # C's tests alone need no B


def _start(config, b: bool) -> dict:
    """A and C's `dvc repro`, and B's chain after A if ``b`` (test_dvc_pipeline.start_pipelines), in a
    temporary folder the session's end deletes."""
    import tempfile
    from pathlib import Path

    from test_dvc_pipeline import start_pipelines

    config._fastflux_dvc = start_pipelines(Path(tempfile.mkdtemp(prefix="fastflux-dvc-")), b)
    mark("pipelines started")
    return config._fastflux_dvc


def _handle(request) -> dict:
    """The background pipelines (started at collection, or now when a pipeline test runs alone; B's
    chain then by the ``runs`` fixture)."""
    if getattr(request.config, "_fastflux_dvc", None) is None:
        _start(request.config, b=False)
    return request.config._fastflux_dvc


def _finished(names: tuple[str, ...]) -> dict | None:
    """FASTFLUX_TEST_PIPELINES: a folder holding finished copies A, B, C (to iterate on the pipeline
    tests without re-running them)."""
    from pathlib import Path

    done = os.environ.get("FASTFLUX_TEST_PIPELINES")
    if not done:
        return None
    return {k: v for name in names for k, v in ((name, Path(done) / name), (f"log_{name.lower()}", Path(done) / f"params-{name}"))}


@pytest.fixture(scope="session")
def runs(request):
    """Repo A after its full `dvc repro`, and B, a copy of it, whose forced re-runs and experiments (the
    report's queued run, a warm exp run) run in the background from the moment A is done
    (test_dvc_pipeline.start_b): ``b``, their future, and ``b_before``, B's files before them."""
    from test_dvc_pipeline import b_after_a, git_identity, start_b, wait_runs

    git_identity()
    out = _finished(("A", "B"))
    if out is None:
        handle = _handle(request)
        chain = handle.get("chain") or b_after_a(handle)
        out = wait_runs(handle, ("A",))
    else:
        chain = start_b(out["B"])
    (out["B"], out["b_before"]), out["b"] = chain["twin"].result(), chain["b"]
    return out


@pytest.fixture(scope="session")
def runs_c(request):
    """Repo C (every switch flipped) after its `dvc repro`: it takes longest, so only its tests wait for it."""
    from test_dvc_pipeline import wait_runs

    return _finished(("C",)) or wait_runs(_handle(request), ("C",))


def pytest_sessionfinish(session, exitstatus):
    import shutil
    import signal

    mark("session finish")
    handle = getattr(session.config, "_fastflux_dvc", None)
    if handle is not None:
        chain = handle.get("chain")
        if chain:
            chain["stop"].set()  # B's chain ends at its next step (when its tests ran, it has ended)
        for _, proc in handle["started"].values():
            if proc.poll() is None:  # DVC and its running stage: the group start_runs gave them
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if chain:  # let DVC finish in B before its folder goes; a B thread still waiting for a killed A ends too
            chain["b"].exception()
        shutil.rmtree(handle["root"], ignore_errors=True)
    mark("session cleaned up")

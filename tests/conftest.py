import os

# Nothing in the test suite may wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_flux_folder(tmp_path_factory):
    from tiny import write_tiny_flux_folder

    return write_tiny_flux_folder(tmp_path_factory.mktemp("flux") / "FLUX.1-tiny")

"""HPS v2 through its worker in a separate interpreter (fastflux_core/hps.py).

The real ``hpsv2`` (ViT-H-14, a 2 GB checkpoint from the hub) cannot be installed or fetched here, so
a stand-in package with hpsv2's import path and call signatures (``hpsv2.src.open_clip.
create_model_and_transforms`` / ``get_tokenizer``, a model returning ``image_features`` and
``text_features``) holds a tiny model. What is tested is ours: the worker runs in another process
with only that package on its path, loads the checkpoint's weights (not the model's initial ones)
from .safetensors or a tensors-only .pt, refuses a pickle holding code, and returns one score per
image in order.
"""

import importlib
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fastflux_core.errors import FastFluxError, ParamsError
from fastflux_core.hps import HpsScorer
from fastflux_core.metrics import Quality, extra_scores
from fastflux_core.params import parse_params

STAND_IN = '''
import numpy as np
import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.img = torch.nn.Linear(3, 4, bias=False)
        self.txt = torch.nn.Embedding(256, 4)

    def forward(self, image, text):  # (B, 3, 8, 8), (B, 16)
        f = torch.nn.functional.normalize(self.img(image.mean((2, 3))), dim=-1)
        t = torch.nn.functional.normalize(self.txt(text).mean(1), dim=-1)
        return {"image_features": f, "text_features": t}


def preprocess(img):
    a = np.asarray(img.convert("RGB").resize((8, 8)), dtype="float32") / 255
    return torch.from_numpy(a).permute(2, 0, 1)


def create_model_and_transforms(name, pretrained=None, **kwargs):
    assert name == "ViT-H-14" and pretrained is None  # nothing may be downloaded
    torch.manual_seed(0)
    return Tiny(), None, preprocess


def get_tokenizer(name):
    return lambda texts: torch.tensor([[ord(c) % 256 for c in t[:16].ljust(16)] for t in texts])
'''


@pytest.fixture
def hps_env(tmp_path, monkeypatch):
    """The stand-in hpsv2 on PYTHONPATH (the worker's interpreter sees it) and in this process."""
    pkg = tmp_path / "site" / "hpsv2" / "src" / "open_clip"
    pkg.mkdir(parents=True)
    for d in (pkg.parent.parent, pkg.parent):
        (d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(STAND_IN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    oc = importlib.import_module("hpsv2.src.open_clip")
    yield oc
    for name in [m for m in sys.modules if m.startswith("hpsv2")]:
        del sys.modules[name]


def _images_prompts(n: int = 5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), [f"a photo of digit {i}" for i in range(n)]


def _expected(oc, state: dict, images: np.ndarray, prompts: list[str]) -> list[float]:
    from PIL import Image

    model, _, pre = oc.create_model_and_transforms("ViT-H-14", None)
    model.load_state_dict(state)
    out = model(torch.stack([pre(Image.fromarray(i)) for i in images]), oc.get_tokenizer("ViT-H-14")(prompts))
    return torch.diagonal(out["image_features"] @ out["text_features"].T).tolist()


def test_worker_scores_each_image_with_the_checkpoints_weights(hps_env, tmp_path):
    torch.manual_seed(1)
    state = {k: v.clone() for k, v in hps_env.Tiny().state_dict().items()}  # not the initial weights
    save_file(state, str(tmp_path / "hps.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "hps.pt")
    images, prompts = _images_prompts()
    want = _expected(hps_env, state, images, prompts)
    init = _expected(hps_env, hps_env.create_model_and_transforms("ViT-H-14")[0].state_dict(), images, prompts)
    for ckpt in ("hps.safetensors", "hps.pt"):
        got = HpsScorer(Path(sys.executable), tmp_path / ckpt, batch_size=2).scores(images, prompts)
        assert got == pytest.approx(want, abs=1e-6) and got != pytest.approx(init, abs=1e-3)
    scorer = HpsScorer(Path(sys.executable), tmp_path / "hps.pt")
    scorer.scores = lambda images, prompts: want  # the worker ran above; the mean goes into the record
    q = Quality(features=None, alignment=object(), hps=scorer)  # type: ignore[arg-type]
    assert extra_scores(q, images, prompts) == {"hps": pytest.approx(sum(want) / len(want))}


class Payload:  # a pickle that would run code on load
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_checkpoint_that_is_not_tensors_only_is_refused(hps_env, tmp_path):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": Payload()}))
    images, prompts = _images_prompts(2)
    with pytest.raises(FastFluxError, match="not a tensors-only checkpoint"):
        HpsScorer(Path(sys.executable), tmp_path / "evil.pt").scores(images, prompts)


def test_hps_params_go_together_and_are_checked_before_any_work(tmp_path, monkeypatch):
    import yaml

    from fastflux_core.preflight import check_metrics

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the prompt files the judge checks
    d = yaml.safe_load((root / "params.yaml").read_text())
    d["metrics"]["hps_python"] = sys.executable
    with pytest.raises(ParamsError, match="hps_python and metrics.hps_checkpoint go together"):
        parse_params(json.loads(json.dumps(d)))
    d["metrics"]["hps_checkpoint"] = str(tmp_path / "missing.pt")
    with pytest.raises(FastFluxError, match="hps_checkpoint: .*missing.pt not found"):
        check_metrics(parse_params(d))
    d["metrics"]["hps_python"] = str(tmp_path / "no-python")
    with pytest.raises(FastFluxError, match="is not an executable file"):
        check_metrics(parse_params(d))


def test_a_worker_that_cannot_score_stops_the_stage_before_any_image_is_made(hps_env, tmp_path, monkeypatch):
    """Issue 30 (11): ``metrics.hps_python`` at a program that is not a Python with hpsv2 used to fail
    after every reference image was generated. :func:`hps_scorer` tries the worker once on one tiny
    image; stage reference@evaluation asks it before it generates."""
    import types

    import yaml

    from fastflux_core import reference
    from fastflux_core.metrics import hps_scorer

    state = hps_env.Tiny().state_dict()
    save_file(state, str(tmp_path / "hps.safetensors"))
    d = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    d["metrics"].update(hps_python="/bin/true", hps_checkpoint=str(tmp_path / "hps.safetensors"))
    with pytest.raises(FastFluxError, match=r"^/bin/true \(metrics.hps_python\) exited without error but wrote no scores"):
        hps_scorer(parse_params(d).metrics)

    def generate(*args, **kwargs):
        raise AssertionError("an image was generated before the HPS worker was tried")

    monkeypatch.setattr(reference, "generate", generate)
    embeds = types.SimpleNamespace(prompts=["a photo of digit 1"])
    with pytest.raises(FastFluxError, match="wrote no scores"):
        reference.make_reference(parse_params(d), "evaluation", embeds, tmp_path / "ref")

    d["metrics"]["hps_python"] = sys.executable
    assert isinstance(hps_scorer(parse_params(d).metrics), HpsScorer)  # the stand-in hpsv2 scores the grey square
    monkeypatch.delenv("PYTHONPATH")  # the same Python without hpsv2: the worker's own last line
    with pytest.raises(FastFluxError, match=r"HPS v2 scoring failed in .*No module named 'hpsv2'"):
        hps_scorer(parse_params(d).metrics)


def test_a_worker_that_writes_something_other_than_a_list_is_named(tmp_path):
    """A metrics.hps_python that runs but writes a JSON number (not FastFLUX's worker) is one clear error,
    not a TypeError from counting it."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != "--out" ]; do shift; done\necho 5 > "$2"\n')
    fake.chmod(0o755)
    with pytest.raises(FastFluxError, match=r"^HPS v2 worker wrote a JSON int, not a list of scores: .*python "
                                            r"\(metrics.hps_python\) must run FastFLUX's worker"):
        HpsScorer(fake, tmp_path / "hps.safetensors").check()

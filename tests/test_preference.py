"""HPS v2 and ImageReward through their worker in a separate interpreter (fastflux_core/preference.py).

The real ``hpsv2`` (ViT-H-14, a 2 GB checkpoint from the hub) and ``image-reward`` (BLIP-large, 1.7 GB)
cannot be installed or fetched here, so stand-in packages with their import paths and call
signatures (``hpsv2.src.open_clip.create_model_and_transforms`` / ``get_tokenizer``, a model returning
``image_features`` and ``text_features``; ``ImageReward.ImageReward.ImageReward(med_config, device)``
with ``score(prompt, image_path)``) hold tiny models. What is tested is ours: the worker runs in
another process with only that package on its path, loads the checkpoint's weights (not the model's
initial ones) from .safetensors or a tensors-only .pt, refuses a pickle holding code and a checkpoint
missing the model's tensors, and returns one score per image in order.
"""

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny import Payload

from fastflux_core.errors import FastFluxError, ParamsError
from fastflux_core.metrics import Quality, item_scores
from fastflux_core.preference import PreferenceScorer
from fastflux_core.params_file import parse_params

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


def stand_in(site: Path, files: dict[str, str], module: str, monkeypatch):
    """A stand-in package (``files``: path under ``site`` → source) on PYTHONPATH — the worker's
    interpreter sees it — and in this process; yields ``module`` imported, forgets the package after."""
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.syspath_prepend(str(site))
    yield importlib.import_module(module)
    top = module.split(".")[0]
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[name]


@pytest.fixture
def hps_env(tmp_path, monkeypatch):
    """The stand-in hpsv2."""
    yield from stand_in(tmp_path / "site", {"hpsv2/__init__.py": "", "hpsv2/src/__init__.py": "",
                                            "hpsv2/src/open_clip/__init__.py": STAND_IN}, "hpsv2.src.open_clip", monkeypatch)


def hps(checkpoint: Path, batch_size: int = 16) -> PreferenceScorer:
    """HPS through the worker, run by this interpreter (the stand-in hpsv2 on its path)."""
    return PreferenceScorer("hps", "HPS v2.1", Path(sys.executable), checkpoint, batch_size=batch_size)


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
        got = hps(tmp_path / ckpt, batch_size=2).scores(images, prompts)
        assert got == pytest.approx(want, abs=1e-6) and got != pytest.approx(init, abs=1e-3)
    scorer = hps(tmp_path / "hps.pt")
    scorer.scores = lambda images, prompts: want  # the worker ran above; per image into the items file
    alignment = types.SimpleNamespace(per_image=lambda images, prompts: np.zeros(len(images)))
    q = Quality(features=None, alignment=alignment, preference=(scorer,))  # type: ignore[arg-type]
    assert item_scores(q, images, prompts)["hps"].tolist() == pytest.approx(want)


def test_a_checkpoint_that_is_not_tensors_only_is_refused(hps_env, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": Payload(marker)}, tmp_path / "evil.pt")  # a valid torch file holding code
    images, prompts = _images_prompts(2)
    with pytest.raises(FastFluxError, match="not a tensors-only checkpoint"):
        hps(tmp_path / "evil.pt").scores(images, prompts)
    assert not marker.exists()


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
    after every reference image was generated. :func:`preference_scorers` tries the worker once on
    one tiny image; stage reference@evaluation asks it before it generates."""
    import yaml

    from fastflux_core import reference
    from fastflux_core.metrics import preference_scorers

    state = hps_env.Tiny().state_dict()
    save_file(state, str(tmp_path / "hps.safetensors"))
    d = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    d["metrics"].update(hps_python="/bin/true", hps_checkpoint=str(tmp_path / "hps.safetensors"))
    with pytest.raises(FastFluxError, match=r"^/bin/true \(metrics.hps_python\) exited without error but wrote no scores"):
        preference_scorers(parse_params(d).metrics)

    def generate(*args, **kwargs):
        raise AssertionError("an image was generated before the HPS worker was tried")

    monkeypatch.setattr(reference, "generate", generate)
    embeds = types.SimpleNamespace(prompts=["a photo of digit 1"])
    with pytest.raises(FastFluxError, match="wrote no scores"):
        reference.make_reference(parse_params(d), "evaluation", embeds, tmp_path / "ref")

    d["metrics"]["hps_python"] = sys.executable
    (scorer,) = preference_scorers(parse_params(d).metrics)  # the stand-in hpsv2 scores the grey square
    assert (scorer.name, scorer.label) == ("hps", "HPS v2.1")
    monkeypatch.delenv("PYTHONPATH")  # the same Python without hpsv2: the worker's own last line
    with pytest.raises(FastFluxError, match=r"HPS v2.1 scoring failed in .*No module named 'hpsv2'"):
        preference_scorers(parse_params(d).metrics)


def test_a_worker_that_writes_something_other_than_a_list_is_named(tmp_path):
    """A metrics.hps_python that runs but writes a JSON number (not FastFLUX's worker) is one clear error,
    not a TypeError from counting it."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != "--out" ]; do shift; done\necho 5 > "$2"\n')
    fake.chmod(0o755)
    with pytest.raises(FastFluxError, match=r"^HPS v2.1 worker wrote a JSON int, not a list of scores: .*python "
                                            r"\(metrics.hps_python\) must run FastFLUX's worker"):
        PreferenceScorer("hps", "HPS v2.1", fake, tmp_path / "hps.safetensors").check()


IR_STAND_IN = '''
import json

import numpy as np
import torch
from PIL import Image


class ImageReward(torch.nn.Module):
    def __init__(self, med_config, device="cpu"):
        super().__init__()
        width = json.load(open(med_config))["hidden_size"]  # the config must be the one given
        self.img = torch.nn.Linear(3, width)
        self.txt = torch.nn.Embedding(256, width)
        self.mlp = torch.nn.Linear(width, 1)

    def score(self, prompt, image_path):
        x = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB"), dtype="float32") / 255).mean((0, 1))
        t = self.txt(torch.tensor([ord(c) % 256 for c in prompt])).mean(0)
        return self.mlp(torch.tanh(self.img(x) + t)).item()
'''


@pytest.fixture
def ir_env(tmp_path, monkeypatch):
    """The stand-in image-reward package, and its med_config.json."""
    (tmp_path / "med_config.json").write_text(json.dumps({"hidden_size": 6}))
    yield from stand_in(tmp_path / "ir-site", {"ImageReward/__init__.py": "", "ImageReward/ImageReward.py": IR_STAND_IN},
                        "ImageReward.ImageReward", monkeypatch)


def test_imagereward_worker_scores_each_image_with_the_checkpoints_weights(ir_env, tmp_path):
    from PIL import Image

    config = tmp_path / "med_config.json"
    torch.manual_seed(3)
    model = ir_env.ImageReward(str(config))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "ir.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "ir.pt")
    images, prompts = _images_prompts(4)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    want = [model.score(p, tmp_path / f"{i}.png") for i, p in enumerate(prompts)]
    torch.manual_seed(4)
    init = [ir_env.ImageReward(str(config)).score(p, tmp_path / f"{i}.png") for i, p in enumerate(prompts)]
    for ckpt in ("ir.safetensors", "ir.pt"):
        scorer = PreferenceScorer("imagereward", "ImageReward v1.0", Path(sys.executable), tmp_path / ckpt, config, 3)
        got = scorer.scores(images, prompts)
        assert got == pytest.approx(want, abs=1e-5) and got != pytest.approx(init, abs=1e-3)
    del state["mlp.weight"]  # a checkpoint of another model: refused, not half-loaded
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(FastFluxError, match=r"ImageReward v1.0 scoring failed .*not an ImageReward checkpoint "
                                            r"\(1 of the model's tensors missing, e.g. mlp.weight\)"):
        PreferenceScorer("imagereward", "ImageReward v1.0", Path(sys.executable), tmp_path / "partial.safetensors",
                         config).scores(images, prompts)


def test_both_scorers_are_tried_before_any_image_and_named_with_their_versions(hps_env, ir_env, tmp_path, monkeypatch):
    """metrics.hps_* and metrics.imagereward_* together: one scorer each, each worker tried on one
    image (here: both stand-ins on one PYTHONPATH), labels with versions; their per-image scores go to
    the items file under their record keys."""
    import yaml

    from fastflux_core.metrics import preference_scorers

    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'site'}:{tmp_path / 'ir-site'}")
    save_file(hps_env.Tiny().state_dict(), str(tmp_path / "hps.safetensors"))
    save_file(ir_env.ImageReward(str(tmp_path / "med_config.json")).state_dict(), str(tmp_path / "ir.safetensors"))
    d = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    d["metrics"].update(hps_python=sys.executable, hps_checkpoint=str(tmp_path / "hps.safetensors"), hps_version="v2.0",
                        imagereward_python=sys.executable, imagereward_checkpoint=str(tmp_path / "ir.safetensors"),
                        imagereward_config=str(tmp_path / "med_config.json"))
    scorers = preference_scorers(parse_params(d).metrics)
    assert [(s.name, s.label) for s in scorers] == [("hps", "HPS v2.0"), ("imagereward", "ImageReward v1.0")]
    images, prompts = _images_prompts(3)
    alignment = types.SimpleNamespace(per_image=lambda images, prompts: np.zeros(len(images)))
    got = item_scores(Quality(features=None, alignment=alignment, preference=scorers), images, prompts)  # type: ignore[arg-type]
    assert set(got) == {"clip", "hps", "imagereward"} and all(len(v) == 3 for v in got.values())
    assert got["imagereward"].tolist() == pytest.approx(scorers[1].scores(images, prompts))


def test_imagereward_params_go_together_and_their_files_are_checked(tmp_path, monkeypatch):
    import yaml

    from fastflux_core.preflight import check_metrics

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    d = yaml.safe_load((root / "params.yaml").read_text())
    d["metrics"].update(imagereward_python=sys.executable, imagereward_checkpoint=str(tmp_path / "ir.pt"))
    with pytest.raises(ParamsError, match="imagereward_python, imagereward_checkpoint and imagereward_config go together"):
        parse_params(json.loads(json.dumps(d)))
    (tmp_path / "ir.pt").write_bytes(b"")
    d["metrics"]["imagereward_config"] = str(tmp_path / "med_config.json")
    with pytest.raises(FastFluxError, match=r"imagereward_config: .*med_config.json not found"):
        check_metrics(parse_params(d))
    d["metrics"]["lpips_backbone"] = str(tmp_path / "alexnet.pth")
    (tmp_path / "med_config.json").write_text("{}")
    with pytest.raises(FastFluxError, match=r"lpips_backbone: .*alexnet.pth not found"):
        check_metrics(parse_params(d))

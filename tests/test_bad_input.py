"""Bad input, as a hostile but fair user gives it: every case ends with exit status 2 and one line
``error: …`` naming the cause (no traceback), and leaves every output, dvc.lock and DVC's cache as
they were — nothing wrong is ever cached.

Each case runs in a fresh copy of the finished micro pipeline (repo A of test_dvc_pipeline.py).
Most run the stage script in this process (as ``python stages/<x>.py …`` would; importing torch
once keeps the suite fast); the last few go through ``dvc repro`` / ``dvc exp run`` and the stage
subprocesses DVC starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import runpy
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from test_dvc_pipeline import _run


@dataclass
class Case:
    name: str
    break_it: Callable[[Path], None]  # makes the workspace bad
    argv: list[str]  # the stage script and its arguments
    message: str  # regex the one error line must match


# ---------------------------------------------------------------- ways to break a workspace


def params(**edits: object) -> Callable[[Path], None]:
    """Set dotted keys in params.yaml (a value of ``DELETE`` removes the key)."""

    def apply(ws: Path) -> None:
        d = yaml.safe_load((ws / "params.yaml").read_text())
        for dotted, value in edits.items():
            *parents, last = dotted.split("__")
            node = d
            for p in parents:
                node = node.setdefault(p, {})
            if value is DELETE:
                node.pop(last)
            else:
                node[last] = value
        (ws / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))

    return apply


DELETE = object()


def write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).unlink(missing_ok=True)  # never write through a link into DVC's cache
        (ws / rel).write_bytes(data.encode() if isinstance(data, str) else data)

    return apply


def first_file(ws: Path, pattern: str) -> Path:
    return sorted(p for p in ws.glob(pattern) if p.is_file())[0]


def flip(pattern: str, at: int = -20) -> Callable[[Path], None]:
    """Flip 4 bytes of the first file matching ``pattern`` (same size: only a checksum notices)."""

    def apply(ws: Path) -> None:
        f = first_file(ws, pattern)
        b = bytearray(f.read_bytes())
        b[at : at + 4 or None] = bytes(x ^ 0xFF for x in b[at : at + 4 or None])
        _replace(f, bytes(b))

    return apply


def flip_last(pattern: str, at: int = 30) -> Callable[[Path], None]:
    """Flip 4 bytes of the last file matching ``pattern``: a shard training may reach only late."""

    def apply(ws: Path) -> None:
        f = sorted(p for p in ws.glob(pattern) if p.is_file())[-1]
        b = bytearray(f.read_bytes())
        b[at : at + 4] = bytes(x ^ 0xFF for x in b[at : at + 4])
        _replace(f, bytes(b))

    return apply


def truncate(pattern: str, keep: float = 0.5) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        f = first_file(ws, pattern)
        _replace(f, f.read_bytes()[: int(f.stat().st_size * keep)])

    return apply


def delete(pattern: str) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        first_file(ws, pattern).unlink()

    return apply


def _replace(f: Path, data: bytes) -> None:
    """Write a workspace file that may be a link into DVC's cache without touching the cache."""
    f.unlink()
    f.write_bytes(data)


def store_attr(store: str, **attrs: object) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        meta = ws / store / "zarr.json"
        d = json.loads(meta.read_text())
        d["attributes"].update(attrs)
        _replace(meta, json.dumps(d).encode())

    return apply


def prompt_file(which: str, data: bytes) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        rel = yaml.safe_load((ws / "params.yaml").read_text())["prompts"][which]["file"]
        (ws / rel).write_bytes(data)

    return apply


def flux_folder(tweak: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A FLUX-layout folder (configs and a weights file; no real weights: the checks come first)."""

    def apply(ws: Path) -> None:
        root = ws / "flux"
        (root / "model_index.json").parent.mkdir(parents=True)
        (root / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
        for sub in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            (root / sub).mkdir()
            (root / sub / "config.json").write_text("{}")
        (root / "vae" / "config.json").write_text('{"block_out_channels": [8]}')  # 1 pixel per latent cell
        (root / "transformer" / "config.json").write_text('{"guidance_embeds": true}')  # FLUX.1-dev's distilled guidance
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text("{}")
        for sub in ("tokenizer", "tokenizer_2"):
            (root / sub).mkdir()
            (root / sub / "tokenizer_config.json").write_text("{}")
        (root / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        if tweak:
            tweak(root)
        params(model={"source": "flux", "path": str(root), "dtype": "float32", "device": "cpu"})(ws)

    return apply


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        for s in steps:
            s(ws)

    return apply


def unlink_rel(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def rmtree_rel(rel: str) -> Callable[[Path], None]:
    return lambda root: shutil.rmtree(root / rel)


V = ["stages/validate.py"]
CAL = "data/capture/1/calibration.zarr"
TRAIN = "data/capture/1/training.zarr"
CASES = [
    # params.yaml: schema
    Case("unknown top-level key", params(ratoi=0.2), V, r"ratoi: unknown key"),
    Case("unknown nested key", params(sandwich__widht=3), V, r"sandwich\.widht: unknown key"),
    Case("ratio out of range", params(ratio=1.5), V, r"ratio: Input should be less than 1"),
    Case("learning rate zero", params(sandwich__learning_rate=0), V, r"sandwich\.learning_rate: must be auto or a number in \(0, 1\], got 0"),
    Case("learning rate a word", params(sandwich__learning_rate="fast"), V, r"sandwich: learning_rate must be a number or auto, not 'fast'"),
    Case("no rate to probe", params(sandwich__probe_rates=[]), V, r"sandwich\.probe_rates: must be distinct numbers in \(0, 1\]"),
    Case("YAML yes for patience", params(sandwich__patience=True), V, r"sandwich: patience must be a number, not True"),
    Case("max_ratio without steps", params(max_ratio=0.0), V, r"steps must write out the chain for max_ratio=0\.0 \(0 of 2 blocks"),
    Case("ratio > max_ratio", params(ratio=0.6), V, r"ratio=0\.6 is above max_ratio=0\.5: raise max_ratio"),
    Case("integer step keys", params(steps={1: {"prev": 0}}), V, r"keys must be quoted"),
    Case("wrong type", params(sandwich__train_steps="many"), V, r"sandwich: train_steps must be a number, not 'many'"),
    Case("YAML yes for a number", params(sandwich__train_steps=True), V, r"sandwich: train_steps must be a number, not True"),
    Case("quoted switch", params(evaluate__sweep="no"), V, r"evaluate: sweep must be true or false, not 'no'"),
    Case("negative seed", params(seed=-1), V, r"seed: Input should be greater than or equal to 0"),
    Case("sandwich width 4", params(sandwich__width=4), V, r"sandwich\.width: Input should be 1, 3 or 5"),
    Case("capture steps beyond schedule", params(capture__timesteps=9), V, r"capture\.timesteps \(9\) must be <= sampling\.steps"),
    Case("sweep beyond the chain", params(evaluate__sweep_lengths=[0, 3]), V,
         r"evaluate\.sweep_lengths \[3\] are not chain lengths: the chain \(steps\) has 0\.\.1 blocks replaced"),
    Case("capture inputs misspelt", params(capture__inputs="noisy"), V, r"capture\.inputs: Input should be 'trajectory' or 'noised'"),
    Case("shards not a multiple of chunks", params(capture__chunk_samples=3), V, r"shard_samples must be a multiple"),
    Case("blocks not a range", params(importance__blocks=[0, 2]), V, r"importance\.blocks must list every block index"),
    Case("alpha and beta zero", params(importance__alpha=0, importance__beta=0), V, r"alpha \+ importance\.beta must be > 0"),
    Case("fid against real without images", params(importance__fid_against="real", metrics__real_images=None), V,
         r"fid_against is 'real' but metrics\.real_images is null"),
    Case("inception without a path", params(metrics__fid_features="inception"), V, r"inception_path is required"),
    Case("missing prompt set", params(prompts__training=DELETE), V, r"prompts\.training: Field required"),
    Case("params.yaml not YAML", write("params.yaml", "ratio: [0.1\nseed: 0\n"), V, r"params\.yaml is not valid YAML"),
    Case("a key given twice", lambda ws: (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "ratio: 0.0\n"),
         V, r"params\.yaml is not valid YAML: .*key 'ratio' appears twice in one mapping"),
    Case("params.yaml a list", write("params.yaml", "- 1\n- 2\n"), V, r"must be a mapping at the top level"),
    Case("params.yaml not UTF-8", write("params.yaml", b"ratio: 0.1 \xff\xfe\n"), V, r"params\.yaml is not UTF-8"),
    # model and device
    Case("cuda that is not there", params(model__device="cuda:99"), V, r"model\.device is 'cuda:99' but"),
    Case("device name", params(model__device="gpu"), V, r"model\.device: String should match pattern"),
    Case("flux without a path", params(model__source="flux"), V, r"model\.path is required when model\.source is 'flux'"),
    Case("path with embedded", params(model__path="/models/x"), V, r"model\.path must be null"),
    Case("flux folder missing", params(model={"source": "flux", "path": "/no/such/FLUX.1-dev"}), V,
         r"model\.path does not exist: /no/such/FLUX\.1-dev"),
    Case("flux folder without model_index", flux_folder(unlink_rel("model_index.json")), V, r"missing model_index\.json"),
    Case("model_index not JSON", flux_folder(lambda r: (r / "model_index.json").write_text("{FluxPipeline")), V,
         r"model_index\.json is not valid JSON"),
    Case("not a FLUX pipeline", flux_folder(lambda r: (r / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')),
         V, r"describes a StableDiffusionPipeline pipeline, not a FLUX one"),
    Case("flux folder without vae", flux_folder(rmtree_rel("vae")), V, r"lacks its vae/ sub-folder"),
    Case("flux transformer without config", flux_folder(unlink_rel("transformer/config.json")), V,
         r"missing .*transformer/config\.json"),
    Case("flux scheduler config garbage", flux_folder(lambda r: (r / "scheduler" / "scheduler_config.json").write_bytes(b"\x00\x01")),
         V, r"scheduler_config\.json is not valid JSON"),
    Case("flux pickled weights only", flux_folder(lambda r: (r / "transformer" / "diffusion_pytorch_model.safetensors").rename(
        r / "transformer" / "diffusion_pytorch_model.bin")), V, r"no safetensors weights"),
    Case("flux with the digit judge", flux_folder(), V, r"metrics use the digit judge, which only the embedded base has"),
    Case("flux without guidance embedding, guided", flux_folder(lambda r: (r / "transformer" / "config.json").write_text("{}")),
         V, r"sampling\.guidance_scale=3\.5, but .*flux has no guidance embedding .* set sampling\.guidance_scale: 1\.0"),
    # images and metrics
    Case("height not packable", params(sampling__height=7), V, r"sampling\.height=7 must be a multiple of 2"),
    Case("more image tokens than exist", params(capture__image_tokens=17), V,
         r"capture\.image_tokens=17 exceeds the 16 image tokens of a 8×8 image"),
    Case("more text tokens than exist", params(capture__text_tokens=9), V,
         r"capture\.text_tokens=9 exceeds the 8 text tokens"),
    Case("size the judge cannot read", params(sampling__height=16, sampling__width=16), V, r"the digit judge reads 8×8 images"),
    Case("real images folder empty", both(write("empty/.keep", ""), params(metrics__real_images="empty")), V,
         r"real_images folder empty holds 0 images"),
    Case("real images folder missing", params(metrics__real_images="nowhere"), V, r"real_images folder not found: nowhere"),
    Case("inception file missing", both(write("inc/readme.txt", "x"), params(metrics__fid_features="inception", metrics__inception_path="inc")),
         V, r"metrics\.inception_path: inc/inception-2015-12-05\.pt not found"),
    # prompt files
    Case("prompt file missing", params(prompts__importance__file="data/prompts/none.txt"), V, r"prompt file not found: data/prompts/none\.txt"),
    Case("prompt file not UTF-8", prompt_file("training", b"a handwritten \xff\xfe seven\n"), V, r"prompt file is not UTF-8 text"),
    Case("prompt file empty", prompt_file("calibration", b"# nothing\n\n"), V, r"prompt file has no prompts"),
    Case("prompt the judge cannot read", prompt_file("evaluation", b"the handwritten number 3\na cat\n"), V,
         r"prompt 2 \('a cat'\) names no single digit"),
    Case("overlapping prompt sets", prompt_file("evaluation", b"the digit zero written by hand\n"), V,
         r"prompt sets importance \(.*\) and evaluation \(.*\) share the prompt 'the digit zero written by hand'"),
    # issue 30 (12, 14): refused by validate, not late (or never)
    Case("a prompt repeated within a set", prompt_file("training", b"the numeral seven, twice\nthe numeral seven, twice\n"),
         V, r"prompt set training \(.*\) repeats 1 prompt\(s\), e\.g\. 'the numeral seven, twice' \(prompts 1, 2\)"),
    Case("importance.blocks beyond the model", params(importance__blocks=[0, 1, 2]), V,
         r"importance\.blocks lists 3 blocks \(0\.\.2\) but the model has 2: list every block index 0\.\.1"),
    Case("Eq. 2 weights that overflow", params(importance__alpha=1e308, importance__beta=1e308), V,
         r"importance\.alpha: Input should be less than or equal to 1000000(\.0)?"),
    # issue 30 (13): a prompt the encoder cuts before the digit the judge scores
    Case("a prompt cut before its digit", prompt_file("training", b"the digit 7\nan image of a handwritten seven\n"),
         ["stages/encode.py"], r"training\.txt: the prompt 'an image of a handwritten seven' is longer than "
         r"text\.max_sequence_length \(8 tokens\) and is cut to 'an image of a handwritten', which loses the digit"),
    # stage arguments
    Case("stage without arguments", lambda ws: None, ["stages/solve.py"], r"usage: python stages/solve\.py <k>"),
    Case("stage argument not a number", lambda ws: None, ["stages/capture.py", "1", "x"], r"prev='x' must be a non-negative integer"),
    Case("reference of an unknown set", lambda ws: None, ["stages/reference.py", "training"], r"not 'training'"),
    # activation stores
    Case("flipped bytes in a calibration shard", flip(f"{CAL}/block_in_img/c/**/*", 30), ["stages/solve.py", "1"],
         r"calibration\.zarr/block_in_img is damaged \(unreadable chunk: .*\): re-run stage capture@1"),
    Case("deleted calibration shard", delete(f"{CAL}/residual_img/c/**/*"), ["stages/solve.py", "1"],
         r"residual_img/c/[0-9/]+ is damaged \(missing from the activation store\): re-run stage capture@1"),
    Case("truncated training shard", truncate(f"{TRAIN}/latents/c/**/*"), ["stages/sandwich.py", "1", "0"],
         r"latents/c/[0-9/]+ is damaged \(\d+ bytes, \d+ when captured\): re-run stage capture@1"),
    Case("flipped bytes in the last training shard", flip_last(f"{TRAIN}/latents/c/**/*"), ["stages/sandwich.py", "1", "0"],
         r"training\.zarr/latents is damaged \(unreadable chunk: .*\): re-run stage capture@1"),
    Case("store without completion mark", store_attr(CAL, complete=False), ["stages/solve.py", "1"],
         r"calibration\.zarr is damaged \(incomplete: capture was interrupted\)"),
    Case("store missing", lambda ws: shutil.rmtree(ws / TRAIN), ["stages/sandwich.py", "1", "0"],
         r"training\.zarr is damaged \(activation store missing\): re-run stage capture@1"),
    # weight and tensor files
    Case("linear payload flipped", flip("data/solve/1/linear.safetensors"), ["stages/sandwich.py", "1", "0"],
         r"linear\.safetensors is damaged \(checksum mismatch\): re-run stage solve@1"),
    Case("linear truncated", truncate("data/solve/1/linear.safetensors"), ["stages/sandwich.py", "1", "0"],
         r"linear\.safetensors is damaged \(unreadable safetensors"),
    Case("chain state garbage", write("data/state/1/state.safetensors", os.urandom(200)), ["stages/assemble.py"],
         r"state/1/state\.safetensors is damaged .*: re-run stage sandwich@1"),
    Case("encoded prompts truncated", truncate("data/encoded/importance.safetensors", 0.9), ["stages/ablate.py", "0"],
         r"importance\.safetensors is damaged .*: re-run stage encode"),
    Case("base weights truncated", truncate("data/base/transformer/diffusion_pytorch_model.safetensors", 0.7),
         ["stages/ablate.py", "0"], r"data/base/transformer is damaged \(cannot be loaded: .*\): re-run stage base"),
    Case("base config garbage", write("data/base/transformer/config.json", "{oops"), ["stages/ablate.py", "0"],
         r"data/base/transformer is damaged \(cannot be loaded"),
    Case("judge weights flipped", flip("data/base/judge.safetensors"), ["stages/evaluate.py"],
         r"judge\.safetensors is damaged \(checksum mismatch\): re-run stage base"),
    Case("plan step garbage", write("data/plan/1.json", "{not json"), ["stages/capture.py", "1", "0"],
         r"data/plan/1\.json is damaged \(not JSON.*\): re-run stage plan"),
    Case("ranking missing", delete("data/rank/ranking.json"), ["stages/plan.py"],
         r"data/rank/ranking\.json is damaged \(missing\): re-run stage rank"),
]


# ---------------------------------------------------------------- the checks


def snapshot(ws: Path) -> dict[str, str]:
    """Every output file, dvc.lock and every cache entry → md5 (timings are not outputs)."""
    out = {}
    for top in ("data", ".dvc/cache"):
        for f in sorted((ws / top).rglob("*")):
            rel = f.relative_to(ws).as_posix()
            if f.is_file() and not rel.startswith(("data/timing", "data/prompts")):
                out[rel] = hashlib.md5(f.read_bytes()).hexdigest()
    out["dvc.lock"] = hashlib.md5((ws / "dvc.lock").read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def pristine(runs, tmp_path_factory):
    """A copy of the finished micro pipeline A (taken before the other tests change A)."""
    dst = tmp_path_factory.mktemp("bad") / "A"
    shutil.copytree(runs["A"], dst, symlinks=True)
    return dst


def _entries(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` → its state: a link's target, a directory's mode, a file's mode, size
    and modification time (to the nanosecond: any write changes it)."""
    out, stack = {}, [root]
    while stack:
        with os.scandir(stack.pop()) as found:
            for e in found:
                rel = os.path.relpath(e.path, root)
                if e.is_symlink():
                    out[rel] = ("link", os.readlink(e.path))
                elif e.is_dir():
                    out[rel] = ("dir", e.stat().st_mode)
                    stack.append(Path(e.path))
                else:
                    st = e.stat()
                    out[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def reset(ws: Path, master: Path) -> None:
    """Make ``ws`` what ``master`` is again. A case breaks a few paths (edits, removes, adds them) and
    must change nothing else, so only those are put back — a fresh copy of the whole workspace for each
    of ~80 cases (and pytest deleting the old ones) cost the suite over a minute."""
    want, have = _entries(master), _entries(ws)
    for rel in sorted(set(have) - set(want), reverse=True):  # children before their folder
        (shutil.rmtree if have[rel][0] == "dir" else os.unlink)(ws / rel)
    for rel in sorted(want):  # folders before their children
        if have.get(rel) == want[rel]:
            continue
        kind, target = want[rel][0], ws / rel
        if rel in have and (have[rel][0] != kind or kind == "link"):
            (shutil.rmtree if have[rel][0] == "dir" else os.unlink)(target)
        if kind == "link":
            os.symlink(want[rel][1], target)
        elif kind == "dir":
            target.mkdir(exist_ok=True)
            os.chmod(target, want[rel][1])
        else:
            shutil.copy2(master / rel, target)  # mode and modification time too
    assert _entries(ws) == want, "the workspace could not be reset"


@pytest.fixture(scope="module")
def _ws(pristine, tmp_path_factory):
    dst = tmp_path_factory.mktemp("ws") / "ws"
    shutil.copytree(pristine, dst, symlinks=True)
    return dst


@pytest.fixture
def ws(_ws, pristine):
    """The finished pipeline, as :func:`pristine` holds it; whatever the test broke is put back after it."""
    yield _ws
    reset(_ws, pristine)


def run_in_process(ws: Path, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``python <argv>`` in ``ws``, in this process: exit status and stderr."""
    monkeypatch.chdir(ws)
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    try:
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        torch.use_deterministic_algorithms(False)
    return code, capsys.readouterr().err


def assert_one_error_line(stderr: str, pattern: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert re.search(pattern, errors[0]), f"{errors[0]!r} does not match {pattern!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_with_one_line_and_changes_nothing(case, ws, monkeypatch, capsys):
    case.break_it(ws)
    before = snapshot(ws)
    code, stderr = run_in_process(ws, case.argv, monkeypatch, capsys)
    assert code == 2, stderr[-3000:]
    assert_one_error_line(stderr, case.message)
    assert snapshot(ws) == before
    assert not (ws / ".fastflux-tmp").exists() or not any((ws / ".fastflux-tmp").rglob("*.tmp-*"))


def test_the_suite_is_big_enough():
    assert len(CASES) + len(DVC_CASES) + 1 >= 40  # + the full disk below


# Through DVC: validation runs on every `dvc repro` / `dvc exp run`, even when every stage is cached.
DVC_CASES = [
    ("typo with everything cached", params(ratoi=0.2), ["dvc", "repro"], r"ratoi: unknown key"),
    ("max_ratio changed alone", params(max_ratio=0.0), ["dvc", "repro"], r"steps must write out the chain for max_ratio=0\.0"),
    ("exp run with a bad value", lambda ws: None, ["dvc", "exp", "run", "-S", "sandwich.width=4"],
     r"sandwich\.width: Input should be 1, 3 or 5"),
    # (solve: the stage with the lightest imports — the usage line comes after them)
    ("stage run by hand without arguments", lambda ws: None, [sys.executable, "stages/solve.py"],
     r"usage: python stages/solve\.py <k>"),
]


@pytest.mark.parametrize("case", DVC_CASES, ids=[c[0] for c in DVC_CASES])
def test_bad_input_through_dvc(case, ws):
    _, break_it, cmd, pattern = case
    _run(["git", "add", "-A"], ws)
    _run(["git", "commit", "-qm", "ran", "--allow-empty"], ws)
    break_it(ws)
    before = snapshot(ws)
    r = _run(cmd, ws, check=False)
    if cmd[0] == "dvc":  # DVC fails (255) because the stage exited with 2, before any other stage ran
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "exited with 2" in out, out[-2000:]
        assert "Running stage 'validate'" in out and out.count("Running stage") == 1
        assert_one_error_line(out, pattern)
    else:
        assert r.returncode == 2
        assert_one_error_line(r.stderr, pattern)
    assert snapshot(ws) == before


def test_too_little_disk_for_the_activation_store(ws, monkeypatch, capsys):
    """capture@1 on a full disk: refused before generating or writing anything."""
    free = shutil._ntuple_diskusage(10**12, 10**12 - 10, 10)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    shutil.rmtree(ws / "data" / "capture" / "1")  # as DVC does before it runs the stage
    before = snapshot(ws)
    code, stderr = run_in_process(ws, ["stages/capture.py", "1", "0"], monkeypatch, capsys)
    assert code == 2
    assert_one_error_line(stderr, r"not enough disk for the activation stores of capture@1 \(calibration\.zarr, training\.zarr\): needs about")
    assert snapshot(ws) == before and not (ws / "data" / "capture" / "1").exists()


def test_validate_refuses_a_run_whose_activation_stores_do_not_fit_the_disk(ws, monkeypatch, capsys):
    """Up front, before any stage works: the chain's stores (twice: DVC's cache copy) against free disk
    plus what data/capture holds now."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10, 10))
    before = snapshot(ws)
    code, stderr = run_in_process(ws, ["stages/validate.py"], monkeypatch, capsys)
    assert code == 2
    assert_one_error_line(stderr, r"the chain's activation stores need about [\d.]+ [MG]B under data/ \(capture@1\.\.\d+, "
                                  r"with DVC's cache copy\), [\d.]+ [MG]B is free")
    assert snapshot(ws) == before

"""The library is layered (fastflux_core/__init__.py lists every module by layer): imports go downward
only, function-body and type-only imports included, and the graph has no cycle; no stage's code
reaches a tool (the estimator, the report, the CLI)."""

import textwrap

import yaml
from depcheck import ROOT, import_closure, stages
from layers import cycle, declared_layers, problems


def test_the_library_imports_downward_only_and_has_no_cycle():
    assert problems() == []


def test_an_upward_import_an_unlisted_module_and_a_cycle_are_each_found(tmp_path):
    package = tmp_path / "fastflux_core"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''\
        """Layers.

        1. bottom — first
            low           imports nothing of ours, it says
        2. top — last
            high          imports low
        """
        '''))
    (package / "high.py").write_text("from fastflux_core.low import x\n")
    (package / "low.py").write_text("def f():\n    from fastflux_core.high import y  # inside a function: still an import\n")
    (package / "stray.py").write_text("")
    found = problems(tmp_path)
    assert "fastflux_core/stray.py is in no layer of the package docstring" in found
    assert "low (layer 1, bottom) imports high, which is above it (layer 2, top)" in found
    assert "import cycle: high → low → high" in found
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_module_has_a_layer_and_the_tools_are_on_top():
    layers = declared_layers()
    assert {m for m, (n, _) in layers.items() if n == max(n for n, _ in layers.values())} >= {
        "budget", "report", "experiments", "cli"}


def test_no_stage_reaches_a_tool():
    """A stage's code deps are its script's import closure: a tool in it would make editing the tool
    re-run the stage (on FLUX.1-dev, GPU-hours for no changed byte)."""
    layers = declared_layers()
    top = max(n for n, _ in layers.values())
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, body in stages(dvc).items():
        script = next(w for w in body["cmd"].split() if w.startswith("stages/"))
        reached = {p.split("/")[-1][:-3] for p in import_closure(ROOT / script) if p.startswith("fastflux_core/")}
        assert not {m for m in reached if layers[m][0] == top}, name

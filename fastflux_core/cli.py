"""The ``fastflux`` command: what users do outside ``dvc repro``.

    fastflux inspect data/capture/1/calibration.zarr [--sample 2] [--json [out.json | -]]
    fastflux inspect data/capture/1               (every store in the folder)
    fastflux lora my_style.safetensors data/export [-o my_style.pruned.safetensors] [--numbering contiguous]
    fastflux budget [--gpu-memory-gb 24] …        (the per-stage memory / disk / time table)
    fastflux experiments [--experiments …] …      (the paper's experiments as queued DVC runs)
    fastflux report                               (report/README.md from report/results.json)

A cause the user can fix — a wrong path, a store that is incomplete, a LoRA in an unknown format —
is one line on stderr (``fastflux: error: …``) and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from fastflux_core.errors import FastFluxError

# sub-commands that are a library module's own command line, passed through whole
DELEGATED = {
    "budget": ("fastflux_core.budget", "per-stage device memory, disk and time for params.yaml (no GPU needed)"),
    "experiments": ("fastflux_core.experiments", "run the paper's experiments as queued DVC experiments"),
    "report": ("fastflux_core.report", "write report/README.md from the experiments' results"),
    "partiprompts": ("fastflux_core.partiprompts", "split PartiPrompts into four disjoint, category-balanced prompt sets"),
    "benchmark-images": ("fastflux_core.benchmark_images", "GenEval / DPG-Bench images in their evaluators' layouts"),
}


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative whole number")
    return int(text)


def _inspect(args: argparse.Namespace) -> None:
    from fastflux_core.io import atomic_file
    from fastflux_core.store_info import describe, format_info, stores_in

    if args.store is None:  # `fastflux inspect --json store.zarr`: --json took the store as its file
        if args.json in (None, "-") or not Path(args.json).is_dir():
            raise FastFluxError("no store given: fastflux inspect <store.zarr or a folder of stores> [--json [PATH|-]]")
        args.store, args.json = Path(args.json), "-"
    to_stdout = args.json == "-"
    if args.json and not to_stdout and not Path(args.json).resolve().parent.is_dir():
        raise FastFluxError(f"--json {args.json}: the folder {Path(args.json).resolve().parent} does not exist")
    infos = [describe(store, sample=args.sample, progress=not (args.quiet or to_stdout)) for store in stores_in(args.store)]
    out = json.dumps(infos[0] if len(infos) == 1 else infos, indent=1)
    if to_stdout:
        print(out)
        return
    print("\n\n".join(format_info(info) for info in infos))
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(out)


def _lora(args: argparse.Namespace) -> None:
    from fastflux_core.lora_compat import convert_file

    out = Path(args.output) if args.output else args.lora.with_name(args.lora.stem + ".pruned.safetensors")
    report = convert_file(args.lora, args.export, out, args.numbering)
    print(f"{args.lora} ({report['format']} format) → {out} ({report['numbering']} numbering)")
    print(f"kept {report['keys_out']} of {report['keys_in']} keys; dropped {len(report['dropped_keys'])} keys of "
          f"replaced blocks {report['dropped_blocks']}, holding {report['dropped_share']:.1%} of the LoRA's "
          f"update norm (Σ‖ΔW‖²)")
    for key in report["dropped_keys"]:
        print(f"  dropped {key}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastflux", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("inspect", help="arrays, layout, size and statistics of an activation store",
                       description="Arrays (named dims, dtype, chunk/shard layout, bytes on disk), the complete flag "
                       "and per-array mean/std/min/max and NaN count of a FastFLUX activation store.")
    p.add_argument("store", type=Path, nargs="?", help="a .zarr store, e.g. data/capture/1/calibration.zarr, or a "
                   "folder of stores (data/capture/1)")
    p.add_argument("--sample", type=_non_negative, default=0, help="also print the first N rows of each array")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="also write everything as JSON to PATH; "
                   "'-' (or no PATH): the JSON on stdout instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_inspect)
    p = sub.add_parser("lora", help="map a FLUX LoRA onto a pruned export (drop the replaced blocks' keys)",
                       description="Read a FLUX LoRA (diffusers/peft, kohya or BFL/ComfyUI keys), remove the keys of "
                       "the export's replaced blocks (renumber kept ones for a contiguous export), write the result "
                       "and report what was dropped.")
    p.add_argument("lora", type=Path, help="the LoRA (.safetensors)")
    p.add_argument("export", type=Path, help="the export folder (data/export) or its transformer folder")
    p.add_argument("-o", "--output", help="where to write (default: <lora>.pruned.safetensors)")
    p.add_argument("--numbering", choices=["original", "contiguous"], default=None,
                   help="block numbering of the output (default: the export's; diffusers loads 'original')")
    p.set_defaults(run=_lora)
    for name, (_, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(run=None)
    return ap


def run_command(run: Callable[[], None], prefix: str = "error") -> None:
    """Run a command's ``main``: a cause the user can fix (:class:`FastFluxError`) is one line on stderr,
    ``<prefix>: …``, and the error's exit status (2; "does not fit the device",
    :class:`~fastflux_core.placement.DeviceMemoryError`: 3, which the stages' placement tells apart);
    anything else is a bug and keeps its traceback. The ``python -m fastflux_core.<tool>`` entry points
    use it as the ``fastflux`` command does."""
    try:
        run()
    except FastFluxError as err:
        print(f"{prefix}: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(err.exit_status)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:  # the module parses its own options (and --help)
        import importlib

        module, _ = DELEGATED[argv[0]]
        run = lambda: importlib.import_module(module).main(argv[1:], prog=f"fastflux {argv[0]}")  # noqa: E731
    else:
        args = parser().parse_args(argv)
        run = lambda: args.run(args)  # noqa: E731
    run_command(run, "fastflux: error")


if __name__ == "__main__":
    main()

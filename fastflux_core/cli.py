"""The ``fastflux`` command: what users do outside ``dvc repro``.

    fastflux inspect data/capture/1/calibration.zarr [--sample 2] [--json out.json]
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
from pathlib import Path

from fastflux_core.errors import FastFluxError

# sub-commands that are a library module's own command line, passed through whole
DELEGATED = {
    "budget": ("fastflux_core.budget", "per-stage device memory, disk and time for params.yaml (no GPU needed)"),
    "experiments": ("fastflux_core.experiments", "run the paper's experiments as queued DVC experiments"),
    "report": ("fastflux_core.report", "write report/README.md from the experiments' results"),
}


def _inspect(args: argparse.Namespace) -> None:
    from fastflux_core.store_info import describe, format_info

    info = describe(args.store, sample=args.sample, progress=not args.quiet)
    print(format_info(info))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))


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
    p.add_argument("store", type=Path, help="a .zarr store, e.g. data/capture/1/calibration.zarr")
    p.add_argument("--sample", type=int, default=0, help="also print the first N rows of each array")
    p.add_argument("--json", help="also write everything as JSON here")
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:  # the module parses its own options (and --help)
        import importlib

        module, _ = DELEGATED[argv[0]]
        run = lambda: importlib.import_module(module).main(argv[1:], prog=f"fastflux {argv[0]}")  # noqa: E731
    else:
        args = parser().parse_args(argv)
        run = lambda: args.run(args)  # noqa: E731
    try:
        run()
    except FastFluxError as err:
        print(f"fastflux: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

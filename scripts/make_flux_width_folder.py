"""Write the FLUX-width rehearsal models (fastflux_core/rehearsal.py) under OUT and, with --params,
a params.yaml from examples/flux-width/params.yaml pointing at them.

Run: python scripts/make_flux_width_folder.py OUT [--double 1] [--single 3] [--params OUT_PARAMS]
"""

import argparse
from pathlib import Path

from fastflux_core.rehearsal import write_clip_stand_in, write_flux_width_folder, write_inception_stand_in

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flux-width" / "params.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--double", type=int, default=1, help="double-stream blocks")
    ap.add_argument("--single", type=int, default=3, help="single-stream blocks")
    ap.add_argument("--params", type=Path, default=None, help="write the example params.yaml here, paths filled in")
    args = ap.parse_args()
    out = args.out.resolve()
    flux = write_flux_width_folder(out / "flux-width", args.double, args.single)
    inception = write_inception_stand_in(out / "inception")
    clip = write_clip_stand_in(out / "clip")
    if args.params:
        text = EXAMPLE.read_text()
        for key, path in (("FLUX_WIDTH_FOLDER", flux), ("INCEPTION_FOLDER", inception), ("CLIP_FOLDER", clip)):
            text = text.replace(key, str(path))
        args.params.write_text(text)
    print(f"wrote {flux}, {inception}, {clip}")


if __name__ == "__main__":
    main()

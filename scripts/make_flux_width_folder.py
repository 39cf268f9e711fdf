"""Write the FLUX-width rehearsal models (fastflux_core/rehearsal.py) under OUT and, with --params,
a params.yaml from examples/flux-width/params.yaml pointing at them.

Run: python scripts/make_flux_width_folder.py OUT [--double 1] [--single 3] [--params OUT_PARAMS]
"""

import argparse
from pathlib import Path

from fastflux_core.rehearsal import (example_params, write_clip_stand_in, write_flux_width_folder,
                                     write_inception_stand_in)


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
        args.params.write_text(example_params(out))
    print(f"wrote {flux}, {inception}, {clip}")


if __name__ == "__main__":
    main()

"""Write the FLUX-width (or SD3-width) rehearsal models (fastflux_core/rehearsal.py) under OUT and,
with --params, a params.yaml from examples/<family>-width/params.yaml pointing at them.

Run: python scripts/make_flux_width_folder.py OUT [--family flux|sd3] [--double 1] [--single 3] [--joint 4]
     [--params OUT_PARAMS]
"""

import argparse
from pathlib import Path

from fastflux_core.rehearsal import (example_params, write_clip_stand_in, write_flux_width_folder,
                                     write_inception_stand_in, write_sd3_width_folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--family", choices=("flux", "sd3"), default="flux")
    ap.add_argument("--double", type=int, default=1, help="FLUX: double-stream blocks")
    ap.add_argument("--single", type=int, default=3, help="FLUX: single-stream blocks")
    ap.add_argument("--joint", type=int, default=4, help="SD3: joint blocks (the last without text output)")
    ap.add_argument("--params", type=Path, default=None, help="write the example params.yaml here, paths filled in")
    args = ap.parse_args()
    out = args.out.resolve()
    if args.family == "sd3":
        model = write_sd3_width_folder(out / "sd3-width", args.joint)
    else:
        model = write_flux_width_folder(out / "flux-width", args.double, args.single)
    inception = write_inception_stand_in(out / "inception")
    clip = write_clip_stand_in(out / "clip")
    if args.params:
        args.params.write_text(example_params(out, args.family))
    print(f"wrote {model}, {inception}, {clip}")


if __name__ == "__main__":
    main()

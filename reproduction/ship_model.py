"""Put a trained final model in results/isbi2012_cpu/model/ (paper_unet/shipped.py): slim checkpoint, bioimage.io
package, the expected prediction of the test crop, SHA256SUMS. The README beside them is written by hand from the
run's record (command, commit, CPU class, precision, wall time, seed).

    python reproduction/ship_model.py --run runs/isbi2012_cpu_model --data-dir ../shared/data/isbi2012 \\
        --provenance runs/model_provenance.json
"""

from __future__ import annotations

import argparse
import json

from paper_unet.shipped import SHIPPED, build, write_hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the run folder of `paper-unet reproduce --only-final`")
    parser.add_argument("--data-dir", help="ISBI 2012 stacks (default: the data cache)")
    parser.add_argument("--provenance", required=True, help="a JSON file: command, commit, CPU, precision, wall time")
    parser.add_argument("--out", default=str(SHIPPED), help=f"default {SHIPPED}")
    args = parser.parse_args()
    provenance = json.loads(open(args.provenance).read())
    names = build(args.run, args.out, args.data_dir, provenance)
    print(f"wrote {write_hashes(args.out, names)} for {', '.join(names)}")


if __name__ == "__main__":
    main()

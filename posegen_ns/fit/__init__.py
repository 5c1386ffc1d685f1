"""Fitting SMPL parameters to 2D keypoints of a filmed person (``ns-posegen-fit``), so that
``ns-train posegen-human --data`` takes a capture that came without body parameters.

- :mod:`posegen_ns.fit.keypoints`: keypoint joint sets (COCO-17, H36M-17, SMPL-24) and files (npz, COCO JSON);
- :mod:`posegen_ns.fit.landmarks`: the body's points those keypoints observe, posed without skinning;
- :mod:`posegen_ns.fit.objective`: the energy's terms (robust reprojection, smoothness);
- :mod:`posegen_ns.fit.solver`: :func:`~posegen_ns.fit.solver.fit_keypoints` (root hypotheses, then L-BFGS);
- :mod:`posegen_ns.fit.initialise`: the critic's prediction as the starting point (EFT-style);
- :mod:`posegen_ns.fit.detect` and :mod:`posegen_ns.fit.blazepose2d_worker`: BlazePose keypoints when none are given;
- :mod:`posegen_ns.fit.capture_io`: the input folder and the written capture; :mod:`posegen_ns.fit.cli`: the command.

Nothing heavy is imported here.
"""

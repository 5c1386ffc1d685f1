"""HybrIK critics: ``hybrik-res34`` (``Simple3DPoseBaseSMPLCam``) and ``hybrik-hrw48`` (``HRNetSMPLCam``).

HybrIK (Li et al., CVPR 2021, github.com/Jeff-sjtu/HybrIK, ``hybrik/models/simple3dposeSMPLWithCam.py``
and ``HRNetWithCam.py``; configs ``256x192_adam_lr1e-3-res34_smpl_3d_cam_2x_mix_w_pw3d.yaml`` and
``256x192_adam_lr1e-3-hrw48_cam_2x_w_pw3d_3dhp.yaml``) predicts 3D heatmaps of 29 joints, reads
them out by soft-argmax, and turns joints + predicted bone twists into SMPL rotations with an
analytical IK (:mod:`adapters.hybrik_ik`).

Networks (parameter names equal the released checkpoints, which load with strict keys):
- ``hybrik-res34``: ``preact`` ResNet-34 trunk (torchvision names) -> ``deconv_layers`` (3 x
  [4x4 stride-2 transposed conv 256, BN, ReLU]) -> ``final_layer`` 1x1 conv to 29 x 64 channels;
  pooled trunk features -> ``fc1`` -> ``drop1`` -> ``fc2`` -> ``drop2`` (no activations, as
  HybrIK) -> ``decshape`` (10 betas, added to the ``init_shape`` buffer = ``h36m_mean_beta.npy``),
  ``decphi`` (23 x (cos, sin)), ``deccam`` (3, added to ``init_cam`` = (0.9, 0, 0)), and
  ``decsigma`` (29 joint uncertainties). The ResNet-34 weights were released in two layouts, with
  and without ``decsigma`` (HybrIK issue #160); both load (the head is optional).
- ``hybrik-hrw48``: ``preact`` HRNet-W48 (:mod:`adapters.hrnet`) giving the heatmap logits from its
  own ``final_layer`` and a 2048-d feature -> ``decshape``, ``decphi``, ``deccam`` (1: scale only,
  ``init_cam`` = (0.9,)), ``decsigma``.
- Both carry ``smpl.*`` buffers (HybrIK's ``SMPL_layer``: ``faces_tensor``, ``v_template``,
  ``shapedirs``, ``posedirs`` (207, 3V), ``J_regressor``, ``J_regressor_h36m``, ``children_map``
  (29,), ``parents`` (29,), ``lbs_weights``), held by :class:`HybrIKSMPLBuffers`. Without a
  ``smpl_model_path=`` (alias ``body=``), the critic builds its SMPL body from them (:func:`body_from_smpl_buffers`).

Preprocessing (HybrIK's ``SimpleTransform3DSMPLCam.test_transform``): the box is made square
(side ``max(w, h)``) and scaled by ``box_scale`` (HybrIK's ``scale_mult``, 1.25 for a tight
person box), cropped to 256 x 256 (differentiably, :mod:`adapters.crop`), and each RGB channel is
normalised with mean (0.406, 0.457, 0.480) and std (0.225, 0.224, 0.229) in that order.

Read-out (HybrIK's ``forward`` with ``bboxes`` and ``img_center``, as its demo and evaluation):
softmax over each joint's 64 x h x w volume; ``(u, v, d) = E[index] / size - 0.5`` in [-0.5, 0.5)
(u: heatmap column, v: row, d: depth bin). The camera is a virtual pinhole with focal 1000 px for
a 256 px crop: root depth ``Z_r = 1000 / (256 s)`` (``s``: predicted scale); joint depth
``Z = Z_r + d * 2.2 m`` (``BBOX_3D_SHAPE`` = 2200 mm, so ``d`` spans +-1.1 m about the root);
``(X, Y) = (u + c_x, v + c_y) * 256 / 1000 * Z`` with ``c`` the box centre's offset from the image
centre in box widths/heights. Output frame: camera (OpenCV axes), metres. HRNet at test time
re-estimates ``s`` by weighted least squares on the 24 joints (:func:`refine_cam_scale`,
HybrIK's ``update_scale``). HybrIK's optional flip test is not done here (one pass per image).

:class:`HybrIKCritic` returns the soft-argmax joints (HybrIK's ``pred_xyz_jts_24``: fully
differentiable w.r.t. the image) root-relative on SMPL-24; :meth:`HybrIKCritic.predict_mesh`
runs the IK and the body model and gives the mesh's H36M-17 joints (HybrIK's ``pred_xyz_jts_17``,
its official metric; see :mod:`adapters.hybrik_ik` for which parts of the IK stop gradients).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from adapters.crop import crop_and_resize
from adapters.hrnet import FEATURE_DIM, HRNet
from adapters.hybrik_ik import HYBRIK_PARENTS_29, hybrik_ik, leaf_vertex_ids, rest_joints_29
from adapters.protocol import Critic, critic_options
from posegen_ns.atomic_io import check_npz, read_cache, torch_save
from posegen_ns.body import BodyModel, load_body_model
from posegen_ns.errors import PoseGenInputError
from posegen_ns.labels import check_critic_values

HYBRIK_IMG_MEAN: tuple[float, float, float] = (0.406, 0.457, 0.480)
"""HybrIK's per-channel mean, subtracted from R, G, B in that order (``test_transform``)."""
HYBRIK_IMG_STD: tuple[float, float, float] = (0.225, 0.224, 0.229)
"""HybrIK's per-channel std, dividing R, G, B in that order."""
NUM_JOINTS = 29
DEPTH_DIM = 64
NUM_TWISTS = 23
NUM_BETAS = 10
INPUT_SIZE = 256
"""Crop side of the released models (``MODEL.IMAGE_SIZE``)."""
CAM_INPUT_SIZE = 256.0
"""Crop side used in HybrIK's camera maths (``self.input_size``), fixed whatever the crop resolution."""
FOCAL_LENGTH = 1000.0
"""Virtual focal length in pixels of the 256 px crop (``MODEL.FOCAL_LENGTH``)."""
BBOX_3D_SHAPE_M: tuple[float, float, float] = (2.2, 2.2, 2.2)
"""``MODEL.BBOX_3D_SHAPE`` (2200 mm each) in metres; the depth axis sets the depth-bin scale."""
DEPTH_FACTOR_M = BBOX_3D_SHAPE_M[2]
DEFAULT_BOX_SCALE = 1.25
"""HybrIK's ``scale_mult`` for a tight person box (its demo's default)."""
INIT_CAM_RES = (0.9, 0.0, 0.0)
INIT_CAM_HRNET = (0.9,)
SMPL_NUM_FACES = 13776


# ---- SMPL buffers of the checkpoints -------------------------------------------------------------
class HybrIKSMPLBuffers(nn.Module):
    """The ``smpl.*`` buffers of HybrIK's checkpoints (``SMPL_layer``). V vertices, F faces, S betas.

    ``faces_tensor (F, 3)`` long, ``v_template (V, 3)``, ``shapedirs (V, 3, S)``,
    ``posedirs (207, 3V)``, ``J_regressor (24, V)``, ``J_regressor_h36m (17, V)``,
    ``children_map (29,)`` long, ``parents (29,)`` long, ``lbs_weights (V, 24)``.
    Only stored (strict loading, :func:`body_from_smpl_buffers`); the IK uses a :class:`BodyModel`.
    """

    SHAPES = {  # name -> shape as a function of (V, F, S)
        "faces_tensor": lambda V, F, S: (F, 3), "v_template": lambda V, F, S: (V, 3),
        "shapedirs": lambda V, F, S: (V, 3, S), "posedirs": lambda V, F, S: (207, 3 * V),
        "J_regressor": lambda V, F, S: (24, V), "J_regressor_h36m": lambda V, F, S: (17, V),
        "children_map": lambda V, F, S: (NUM_JOINTS,), "parents": lambda V, F, S: (NUM_JOINTS,),
        "lbs_weights": lambda V, F, S: (V, 24),
    }

    def __init__(self, num_vertices: int = 6890, num_faces: int = SMPL_NUM_FACES, num_betas: int = NUM_BETAS):
        super().__init__()
        for name, shape in self.SHAPES.items():
            dtype = torch.long if name in ("faces_tensor", "children_map", "parents") else torch.float32
            self.register_buffer(name, torch.zeros(shape(num_vertices, num_faces, num_betas), dtype=dtype))
        self.parents.copy_(torch.tensor(HYBRIK_PARENTS_29))
        self.children_map.copy_(hybrik_children_map())

    @classmethod
    def from_body(cls, body: BodyModel) -> "HybrIKSMPLBuffers":
        """Buffers filled from ``body`` (as HybrIK fills them from the SMPL ``.pkl``)."""
        smpl = body.smpl
        V = body.num_vertices
        out = cls(V, int(body.faces.shape[0]), int(smpl.shapedirs.shape[-1]))
        with torch.no_grad():
            out.faces_tensor.copy_(body.faces)
            out.v_template.copy_(smpl.v_template)
            out.shapedirs.copy_(smpl.shapedirs)
            out.posedirs.copy_(smpl.posedirs)  # smplx stores (207, 3V) like HybrIK
            out.J_regressor.copy_(smpl.J_regressor)
            out.J_regressor_h36m.copy_(body.J_regressor_h36m)
            out.lbs_weights.copy_(smpl.lbs_weights)
        return out

    def resize_like(self, state: dict[str, Tensor], prefix: str = "smpl.") -> None:
        """Re-create the buffers with the shapes (and dtypes) found in ``state`` under ``prefix``
        so a checkpoint made with any SMPL-layout body loads strictly."""
        for name in self.SHAPES:
            value = state.get(prefix + name)
            if value is not None:
                self.register_buffer(name, torch.zeros_like(value, device=getattr(self, name).device))


def hybrik_children_map() -> Tensor:
    """HybrIK's ``SMPL_layer.children_map`` ``(29,)``: first child of each joint in the 29-joint
    tree, -1 for the leaves, 3 (spine1) for the pelvis, 12 (neck) for spine3."""
    children = [-1] * NUM_JOINTS
    for j in range(NUM_JOINTS):
        p = HYBRIK_PARENTS_29[j]
        if children[p] < 0:  # p = -1 (root) writes the last entry, a leaf reset below, as HybrIK
            children[p] = j
    children[24:] = [-1] * 5
    children[0], children[9] = 3, 12
    return torch.tensor(children, dtype=torch.long)


def body_from_smpl_buffers(smpl: HybrIKSMPLBuffers, j_regressor_h36m: str | Path | None = None) -> BodyModel:
    """A :class:`BodyModel` from a checkpoint's SMPL buffers (written once as an SMPL-layout
    ``.npz`` in ``cache_dir()/hybrik``, keyed by a hash of the buffers).

    Raises:
        PoseGenInputError: all-zero buffers (a network built without a body or checkpoint).
    """
    from posegen_ns.body.smpl_files import cache_dir, write_smpl_npz

    if float(smpl.v_template.abs().sum()) == 0.0:
        raise PoseGenInputError(
            "the HybrIK network has no SMPL data (its smpl.* buffers are empty); pass smpl_model_path=PATH/TO/SMPL_NEUTRAL.pkl "
            "or a checkpoint that carries them."
        )
    arrays = {
        "v_template": smpl.v_template.cpu().numpy(),
        "f": smpl.faces_tensor.cpu().numpy(),
        "weights": smpl.lbs_weights.cpu().numpy(),
        "J_regressor": smpl.J_regressor.cpu().numpy(),
        "kintree_table": np.stack([smpl.parents[:24].cpu().numpy(), np.arange(24)]).astype(np.int64),
        "shapedirs": smpl.shapedirs.cpu().numpy(),
        "posedirs": smpl.posedirs.T.reshape(-1, 3, 207).cpu().numpy(),  # (207, 3V) -> (V, 3, 207)
        "J_regressor_h36m": smpl.J_regressor_h36m.cpu().numpy(),
    }
    digest = hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())).hexdigest()[:16]
    path = cache_dir() / "hybrik" / f"smpl-{digest}.npz"
    if not read_cache(path, check_npz, "HybrIK SMPL buffers"):  # missing or damaged: (re)written
        write_smpl_npz(arrays, path)
    return BodyModel(path, j_regressor_h36m=j_regressor_h36m)


# ---- networks -------------------------------------------------------------------------------------
@dataclass
class HybrIKNetOutput:
    """Raw network output. B = batch, h x w = heatmap size (crop / 4)."""

    heatmaps: Tensor  # (B, 29, 64, h, w) logits
    betas: Tensor  # (B, 10) init_shape + decshape
    phis: Tensor  # (B, 23, 2) unnormalised (cos, sin) twists of joints 1..23
    cam: Tensor  # (B, 3) (s, tx, ty) for ResNet, (B, 1) (s,) for HRNet; init_cam added
    sigma: Tensor | None  # (B, 29) sigmoid uncertainties, None without decsigma


class _ResNetTrunk(nn.Module):
    """torchvision ResNet without pooling and classifier (HybrIK's ``layers/Resnet.py`` names)."""

    def __init__(self, num_layers: int):
        super().__init__()
        net = getattr(torchvision.models, f"resnet{num_layers}")(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _HybrIKHead(nn.Module):
    """Shared parts: buffers, twist/shape/camera/sigma decoders and the heatmap reshape."""

    refines_scale = False

    def _init_head(self, feat: int, cam: tuple[float, ...], with_sigma: bool, smpl: HybrIKSMPLBuffers | None,
                   init_shape: Tensor | None) -> None:
        shape = torch.zeros(NUM_BETAS) if init_shape is None else torch.as_tensor(init_shape, dtype=torch.float32).reshape(NUM_BETAS)
        self.register_buffer("init_shape", shape.clone())
        self.register_buffer("init_cam", torch.tensor(cam, dtype=torch.float32))
        self.decshape = nn.Linear(feat, NUM_BETAS)
        self.decphi = nn.Linear(feat, NUM_TWISTS * 2)
        self.deccam = nn.Linear(feat, len(cam))
        self.decsigma: nn.Linear | None = nn.Linear(feat, NUM_JOINTS) if with_sigma else None
        self.smpl = smpl if smpl is not None else HybrIKSMPLBuffers(1, 1, NUM_BETAS)

    def set_sigma_head(self, present: bool) -> None:
        """Add or remove ``decsigma`` (the two released ResNet-34 layouts, HybrIK issue #160)."""
        if present and self.decsigma is None:
            self.decsigma = nn.Linear(self.decphi.in_features, NUM_JOINTS).to(self.decphi.weight)
        elif not present:
            self.decsigma = None

    def _decode(self, heat: Tensor, xc: Tensor) -> HybrIKNetOutput:
        B, _, h, w = heat.shape
        return HybrIKNetOutput(
            heatmaps=heat.reshape(B, NUM_JOINTS, -1, h, w),  # channel = joint * 64 + depth bin
            betas=self.decshape(xc) + self.init_shape,
            phis=self.decphi(xc).reshape(B, NUM_TWISTS, 2),
            cam=self.deccam(xc) + self.init_cam,
            sigma=None if self.decsigma is None else self.decsigma(xc).sigmoid(),
        )


class HybrIKResNet(_HybrIKHead):
    """``Simple3DPoseBaseSMPLCam`` (ResNet trunk, ``NUM_DECONV_FILTERS`` = 256 x 3, 29 joints x 64 bins).

    Args:
        num_layers: 34 for the released model (18 and 50 build the same layout with other trunks).
        with_sigma: whether ``decsigma`` exists (the newer of the two released layouts).
        smpl: the SMPL buffers (:meth:`HybrIKSMPLBuffers.from_body`); a 1-vertex placeholder if None.
        init_shape: ``(10,)`` initial betas (``h36m_mean_beta.npy``); zeros if None.

    ``forward(x (B, 3, S, S))`` -> :class:`HybrIKNetOutput`, heatmaps at S/4 (S a multiple of 32).
    """

    def __init__(self, num_layers: int = 34, with_sigma: bool = True, smpl: HybrIKSMPLBuffers | None = None,
                 init_shape: Tensor | None = None):
        super().__init__()
        if num_layers not in (18, 34, 50):
            raise PoseGenInputError(f"HybrIK ResNet depth {num_layers} is not supported; use 34 (or 18, 50).")
        self.num_layers = num_layers
        self.preact = _ResNetTrunk(num_layers)
        feat = self.preact.out_channels
        layers: list[nn.Module] = []
        cin = feat
        for _ in range(3):
            layers += [nn.ConvTranspose2d(cin, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True)]
            cin = 256
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(256, NUM_JOINTS * DEPTH_DIM, 1, 1, 0)
        for m in self.deconv_layers.modules():  # HybrIK's _initialize
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(feat, 1024)
        self.drop1 = nn.Dropout(p=0.5)
        self.fc2 = nn.Linear(1024, 1024)
        self.drop2 = nn.Dropout(p=0.5)
        self._init_head(1024, INIT_CAM_RES, with_sigma, smpl, init_shape)

    def forward(self, x: Tensor) -> HybrIKNetOutput:
        x0 = self.preact(x)
        heat = self.final_layer(self.deconv_layers(x0))
        xc = self.drop2(self.fc2(self.drop1(self.fc1(self.avg_pool(x0).flatten(1)))))
        return self._decode(heat, xc)


class HybrIKHRNet(_HybrIKHead):
    """``HRNetSMPLCam`` (HRNet-W48 trunk with heatmap and 2048-d feature heads).

    Args:
        width: HRNet width (48 for the released model; tests use narrower ones, same key names).
        with_sigma, smpl, init_shape: as :class:`HybrIKResNet`.
    """

    refines_scale = True

    def __init__(self, width: int = 48, with_sigma: bool = True, smpl: HybrIKSMPLBuffers | None = None,
                 init_shape: Tensor | None = None):
        super().__init__()
        self.width = width
        self.preact = HRNet(width, NUM_JOINTS * DEPTH_DIM)
        self._init_head(FEATURE_DIM, INIT_CAM_HRNET, with_sigma, smpl, init_shape)

    def forward(self, x: Tensor) -> HybrIKNetOutput:
        heat, feat = self.preact(x)
        return self._decode(heat, feat)


# ---- read-out and camera ------------------------------------------------------------------------
def soft_argmax_3d(heatmaps: Tensor) -> Tensor:
    """Integral read-out of 3D heatmap logits ``(B, J, D, H, W)`` -> ``(B, J, 3)`` ``(u, v, d)``.

    Softmax over each joint's ``D*H*W`` volume, then the expected index along each axis divided
    by that axis' size, minus 0.5: values in ``[-0.5, 0.5)``, index 0 -> -0.5 (HybrIK's
    ``norm_heatmap('softmax')`` + ``coord = E[k] / size - 0.5``). Differentiable.
    """
    B, J, D, H, W = heatmaps.shape
    p = F.softmax(heatmaps.reshape(B, J, -1), dim=-1).reshape(B, J, D, H, W)
    dev, dt = heatmaps.device, heatmaps.dtype
    u = (p.sum((2, 3)) * torch.arange(W, device=dev, dtype=dt)).sum(-1) / W - 0.5
    v = (p.sum((2, 4)) * torch.arange(H, device=dev, dtype=dt)).sum(-1) / H - 0.5
    d = (p.sum((3, 4)) * torch.arange(D, device=dev, dtype=dt)).sum(-1) / D - 0.5
    return torch.stack([u, v, d], dim=-1)


def square_boxes(boxes: Tensor, scale: float = 1.0) -> Tensor:
    """Square boxes ``(B, 4)`` xyxy about the same centres with side ``scale * max(w, h)``
    (HybrIK's ``_box_to_center_scale`` for a 1:1 input with ``scale_mult = scale``)."""
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    half = 0.5 * scale * (boxes[:, 2:] - boxes[:, :2]).amax(dim=-1, keepdim=True)
    return torch.cat([centre - half, centre + half], dim=-1)


def box_centre_offset(boxes: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """``(B, 2)`` offset of each box centre from the image centre in box widths / heights
    (HybrIK's ``bbox_center``: ``((cx - W/2) / w, (cy - H/2) / h)``)."""
    H, W = image_hw
    wh = boxes[:, 2:] - boxes[:, :2]
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    return (centre - torch.tensor([W / 2.0, H / 2.0], dtype=boxes.dtype, device=boxes.device)) / wh


def root_depth(cam_scale: Tensor) -> Tensor:
    """Root depth ``(B,)`` metres from the predicted scale ``(B,)``: ``f / (256 s)`` (HybrIK's ``camDepth``)."""
    return FOCAL_LENGTH / (CAM_INPUT_SIZE * cam_scale + 1e-9)


def uvd_to_camera(uvd: Tensor, cam_scale: Tensor, centre_offset: Tensor) -> Tensor:
    """Back-project ``uvd (B, J, 3)`` to camera-frame joints ``(B, J, 3)`` in metres (module docstring):
    ``Z = f / (256 s) + d * 2.2``, ``(X, Y) = (uv + c) * 256 / f * Z``."""
    Z = root_depth(cam_scale)[:, None] + uvd[..., 2] * DEPTH_FACTOR_M  # (B, J)
    XY = (uvd[..., :2] + centre_offset[:, None]) * (CAM_INPUT_SIZE / FOCAL_LENGTH) * Z[..., None]
    return torch.cat([XY, Z[..., None]], dim=-1)


def refine_cam_scale(uvd: Tensor, sigma: Tensor | None, cam_scale: Tensor, phis: Tensor, rest_joints: Tensor,
                     centre_offset: Tensor) -> Tensor:
    """HRNet's test-time camera scale (HybrIK's ``update_scale``) ``(B,)``.

    Back-projects with the predicted scale, poses the skeleton with the naive IK, then solves the
    weighted least squares ``min_x sum_k w_k^2 |uv_k x - (XY_k - 256 uv_k Z_k / f)|^2`` over the 24
    SMPL joints (``w = max(0, 1 - 10 sigma)``; 1 without sigma; ``Z`` relative to the root depth)
    and returns ``1 / x``. Samples whose weights are all zero keep ``cam_scale`` (HybrIK falls back
    for the whole batch when its matrix inverse fails).

    Args:
        uvd: ``(B, 29, 3)``; sigma: ``(B, 29)`` or None; cam_scale: ``(B,)``; phis: ``(B, 23, 2)``;
        rest_joints: ``(B, 29, 3)``; centre_offset: ``(B, 2)``.
    """
    xyz = uvd_to_camera(uvd, cam_scale, centre_offset)  # (B, 29, 3)
    root = torch.cat([xyz[:, 0, :2], (uvd[:, 0, 2] * DEPTH_FACTOR_M)[:, None]], dim=-1)  # (B, 3), no root depth
    posed = hybrik_ik(xyz, phis, rest_joints, adaptive=False).posed_joints + root[:, None]  # (B, 24, 3)
    uv = uvd[:, :24, :2] + centre_offset[:, None]  # (B, 24, 2)
    w2 = torch.ones_like(uv[..., 0]) if sigma is None else (1.0 - 10.0 * sigma[:, :24]).clamp_min(0.0) ** 2
    rhs = posed[..., :2] - (CAM_INPUT_SIZE / FOCAL_LENGTH) * uv * posed[..., 2:]
    ata = (w2[..., None] * uv**2).sum((1, 2))
    atb = (w2[..., None] * uv * rhs).sum((1, 2))
    ok = ata > 0
    x = atb / torch.where(ok, ata, torch.ones_like(ata))
    return torch.where(ok & (x != 0), 1.0 / torch.where(x != 0, x, torch.ones_like(x)), cam_scale)


# ---- the critic ---------------------------------------------------------------------------------
@dataclass
class HybrIKPrediction:
    """Output of :meth:`HybrIKCritic.predict`. B = batch; camera frame (OpenCV axes), metres."""

    joints29: Tensor  # (B, 29, 3) soft-argmax joints, root-relative (HybrIK's pred_xyz_jts_29 * 2.2 m)
    uvd: Tensor  # (B, 29, 3) normalised heatmap coordinates in [-0.5, 0.5)
    cam_root: Tensor  # (B, 3) pelvis in the camera frame (virtual camera of the module docstring)
    cam_scale: Tensor  # (B,) scale s (refined for HRNet at test time)
    betas: Tensor  # (B, 10)
    phis: Tensor  # (B, 23, 2) unnormalised twists
    sigma: Tensor | None  # (B, 29) or None
    centre_offset: Tensor  # (B, 2) box centre offset used by the camera


@dataclass
class HybrIKMesh:
    """Output of :meth:`HybrIKCritic.predict_mesh` (IK + body). Root-relative metres, camera frame."""

    joints_h36m: Tensor  # (B, 17, 3) from the mesh (HybrIK's pred_xyz_jts_17), H36M pelvis at 0
    joints_smpl24: Tensor  # (B, 24, 3) posed skeleton (pred_xyz_jts_24_struct), pelvis at 0
    vertices: Tensor  # (B, V, 3) H36M pelvis at 0
    rotmat: Tensor  # (B, 24, 3, 3) IK rotations (root: orientation in the camera frame)
    prediction: HybrIKPrediction


class HybrIKCritic(Critic):
    """HybrIK as a critic: square box -> crop 256 -> HybrIK normalisation -> network -> soft-argmax.

    Args:
        net: :class:`HybrIKResNet` or :class:`HybrIKHRNet`.
        body: the body model of the IK / mesh (SMPL for the released weights).
        input_size: crop side (256 for the released weights; a multiple of 32).
        box_scale: box enlargement after squaring (HybrIK's ``scale_mult``).
    """

    joint_set = "smpl24"
    differentiable = True

    def __init__(self, net: HybrIKResNet | HybrIKHRNet, body: BodyModel, input_size: int = INPUT_SIZE,
                 box_scale: float = DEFAULT_BOX_SCALE):
        super().__init__()
        if input_size % 32:
            raise PoseGenInputError(f"HybrIK input_size {input_size} must be a multiple of 32 (256 for the released weights).")
        self.net = net
        self.body = body
        self.input_size = int(input_size)
        self.box_scale = float(box_scale)
        self.register_buffer("leaf_ids", leaf_vertex_ids(body), persistent=False)
        self.register_buffer("img_mean", torch.tensor(HYBRIK_IMG_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("img_std", torch.tensor(HYBRIK_IMG_STD).reshape(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S)`` RGB in [0, 1] -> HybrIK-normalised input (per channel, R G B order)."""
        return (images - self.img_mean) / self.img_std

    def crop_boxes(self, boxes: Tensor) -> Tensor:
        """The boxes actually cropped: :func:`square_boxes` with :attr:`box_scale`."""
        return square_boxes(boxes, self.box_scale)

    def crop(self, images: Tensor, boxes: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] and person boxes ``(B, 4)`` -> normalised crops ``(B, 3, S, S)``."""
        return self.normalize(crop_and_resize(images, self.crop_boxes(boxes), self.input_size))

    def predict(self, images: Tensor, boxes: Tensor) -> HybrIKPrediction:
        """Network + soft-argmax + camera for ``images (B, 3, H, W)`` in [0, 1], ``boxes (B, 4)`` xyxy."""
        sq = self.crop_boxes(boxes)
        out = self.net(self.normalize(crop_and_resize(images, sq, self.input_size)))
        uvd = soft_argmax_3d(out.heatmaps)  # (B, 29, 3)
        offset = box_centre_offset(sq, tuple(images.shape[-2:]))
        scale = out.cam[:, 0]
        if self.net.refines_scale and not self.training:
            rest = rest_joints_29(self.body, out.betas[:, : self.body.num_betas], self.leaf_ids)
            scale = refine_cam_scale(uvd, out.sigma, scale, out.phis, rest, offset)
        xyz = uvd_to_camera(uvd, scale, offset)  # (B, 29, 3)
        return HybrIKPrediction(
            joints29=xyz - xyz[:, :1], uvd=uvd, cam_root=xyz[:, 0], cam_scale=scale, betas=out.betas,
            phis=out.phis, sigma=out.sigma, centre_offset=offset,
        )

    def forward(self, images: Tensor, boxes: Tensor, return_params: bool = False) -> Tensor | tuple[Tensor, HybrIKPrediction]:
        """Differentiable soft-argmax SMPL-24 joints ``(B, 24, 3)``, root-relative, metres, camera
        frame (the first 24 of the 29); with ``return_params`` also the :class:`HybrIKPrediction`."""
        pred = self.predict(images, boxes)
        joints = pred.joints29[:, :24]
        return (joints, pred) if return_params else joints

    def mesh_from_prediction(self, pred: HybrIKPrediction) -> HybrIKMesh:
        """IK (adaptive in eval mode, naive in train mode, as HybrIK) + body model."""
        betas = pred.betas[:, : self.body.num_betas]
        rest = rest_joints_29(self.body, betas, self.leaf_ids)
        ik = hybrik_ik(pred.joints29, pred.phis, rest, adaptive=not self.training)
        check_critic_values(self, "joints or shape", pred.joints29, betas)  # a broken critic, not a bad pose
        out = self.body(body_pose=ik.rotmat[:, 1:], global_orient=ik.rotmat[:, 0], betas=betas)
        root = out.joints_h36m[:, :1]
        return HybrIKMesh(
            joints_h36m=out.joints_h36m - root, joints_smpl24=out.joints - out.joints[:, :1],
            vertices=out.vertices - root, rotmat=ik.rotmat, prediction=pred,
        )

    def predict_mesh(self, images: Tensor, boxes: Tensor) -> HybrIKMesh:
        """Full HybrIK output: soft-argmax joints -> IK -> SMPL mesh -> H36M-17 (official metric)."""
        return self.mesh_from_prediction(self.predict(images, boxes))

    def joints_h36m(self, images: Tensor, boxes: Tensor) -> Tensor:
        """H36M-17 joints ``(B, 17, 3)`` regressed from the IK mesh, root-relative (HybrIK's metric)."""
        return self.predict_mesh(images, boxes).joints_h36m


# ---- checkpoints --------------------------------------------------------------------------------
def read_hybrik_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a HybrIK checkpoint: a raw state dict (the released ``.pth`` files) or a
    dict with a ``'model'`` state dict; a uniform ``module.`` prefix is stripped.

    Raises:
        PoseGenInputError: missing/unreadable file, or no tensors in it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoseGenInputError(
            f"HybrIK checkpoint {path} does not exist; the released weights are linked from HybrIK's README "
            "(github.com/Jeff-sjtu/HybrIK, 'MODEL ZOO': ResNet-34 and HRNet-W48 with predicted camera)."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise PoseGenInputError(f"HybrIK checkpoint {path} cannot be read ({err}).") from err
    state = ckpt.get("model") if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) else ckpt
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise PoseGenInputError(f"HybrIK checkpoint {path} is not a state dict (nor a dict with a 'model' state dict).")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _listing(keys: list[str], limit: int = 20) -> str:
    """``keys`` as a list literal, the first ``limit`` then ``(and N more)``."""
    return str(keys) if len(keys) <= limit else f"{keys[:limit]} (and {len(keys) - limit} more)"


def load_hybrik_state(path: str | Path, net: HybrIKResNet | HybrIKHRNet, state: dict[str, Tensor] | None = None) -> None:
    """Load a HybrIK checkpoint into ``net`` with strict key matching.

    The ``smpl.*`` buffers take the file's shapes; ``decsigma`` is added or removed to match the
    file (both released ResNet-34 layouts). BatchNorm ``num_batches_tracked`` counters missing
    from a file are tolerated.

    Raises:
        PoseGenInputError: missing or unexpected keys (all listed) or wrong shapes, naming the file.
    """
    state = read_hybrik_state(path) if state is None else state
    net.smpl.resize_like(state)
    net.set_sigma_head(any(k.startswith("decsigma.") for k in state))
    own = net.state_dict()
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    name = type(net).__name__
    if missing or unexpected:
        raise PoseGenInputError(
            f"HybrIK checkpoint {path} does not match the {name} layout: missing keys {_listing(missing)}, "
            f"unexpected keys {_listing(unexpected)}. Use hybrik-res34 for Simple3DPoseBaseSMPLCam files and hybrik-hrw48 "
            "for HRNetSMPLCam files."
        )
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise PoseGenInputError(f"HybrIK checkpoint {path} has tensors of the wrong shape for {name}: {wrong[:8]}.")
    net.load_state_dict(state, strict=False)  # keys checked above (num_batches_tracked may be absent)


def save_hybrik_checkpoint(net: HybrIKResNet | HybrIKHRNet, path: str | Path, wrap: bool = False) -> Path:
    """Write ``net``'s state dict as HybrIK releases it (raw), or as ``{'model': state_dict}``."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return torch_save({"model": state} if wrap else state, path)  # atomic (posegen_ns.atomic_io)


# ---- builders / entry points --------------------------------------------------------------------
_OPTIONS = ("input_size", "box_scale", "width", "num_layers")
"""Options of the HybrIK loaders besides the data files of :data:`adapters.protocol.DATA_FILES`."""


def _load_mean_beta(path: str | Path) -> Tensor:
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoseGenInputError(f"h36m_mean_beta {path} does not exist; it is HybrIK's model_files/h36m_mean_beta.npy.")
    arr = np.load(path)
    if arr.size != NUM_BETAS:
        raise PoseGenInputError(f"h36m_mean_beta {path} has shape {arr.shape}; HybrIK's file holds ({NUM_BETAS},) betas.")
    return torch.as_tensor(arr.reshape(NUM_BETAS), dtype=torch.float32)


def build_hybrik_critic(
    arch: str = "res34",
    body: BodyModel | str | Path | None = "open",
    checkpoint: str | Path | None = None,
    j_regressor_h36m: str | Path | None = None,
    h36m_mean_beta: str | Path | None = None,
    input_size: int = INPUT_SIZE,
    box_scale: float = DEFAULT_BOX_SCALE,
    width: int | None = None,
    num_layers: int = 34,
) -> HybrIKCritic:
    """A :class:`HybrIKCritic` (in eval mode), random weights unless ``checkpoint`` is given.

    Args:
        arch: ``"res34"`` (:class:`HybrIKResNet`) or ``"hrw48"`` (:class:`HybrIKHRNet`).
        body: BodyModel, ``"open"``/``"tiny"``/SMPL path, or None: with a checkpoint, the body made
            from its ``smpl.*`` buffers (:func:`body_from_smpl_buffers`), else ``"open"``.
        checkpoint: a released HybrIK ``.pth`` (raw state dict or ``{'model': ...}``), strictly loaded.
        j_regressor_h36m: H36M regressor ``.npy`` for the body (else the body's / checkpoint's own).
        h36m_mean_beta: ``init_shape`` for random weights (a checkpoint carries its own).
        width: HRNet width; default: read from the checkpoint, else 48.
        num_layers: ResNet depth (34 for the released model).

    Raises:
        PoseGenInputError: unknown arch, missing files, or a checkpoint that does not fit.
    """
    state = read_hybrik_state(checkpoint) if checkpoint is not None else None
    init_shape = _load_mean_beta(h36m_mean_beta) if h36m_mean_beta is not None else None
    with_sigma = True if state is None else any(k.startswith("decsigma.") for k in state)
    if isinstance(body, (str, Path)):
        body = load_body_model(body, j_regressor_h36m=j_regressor_h36m)
    smpl = HybrIKSMPLBuffers.from_body(body) if isinstance(body, BodyModel) else None
    if arch == "res34":
        net: HybrIKResNet | HybrIKHRNet = HybrIKResNet(num_layers, with_sigma, smpl, init_shape)
    elif arch == "hrw48":
        if width is None:
            w = state.get("preact.final_layer.weight") if state is not None else None
            width = int(w.shape[1]) if w is not None and w.ndim == 4 else 48
        net = HybrIKHRNet(width, with_sigma, smpl, init_shape)
    else:
        raise PoseGenInputError(f"unknown HybrIK architecture {arch!r}; use 'res34' or 'hrw48'.")
    if state is not None:
        load_hybrik_state(checkpoint, net, state)
    if body is None:
        body = body_from_smpl_buffers(net.smpl, j_regressor_h36m) if state is not None else load_body_model(
            "open", j_regressor_h36m=j_regressor_h36m)
        if state is None:
            net.smpl = HybrIKSMPLBuffers.from_body(body)
    return HybrIKCritic(net, body, input_size, box_scale).eval_mode()


def _loader(arch: str):
    def load(checkpoint: str | Path | None = None, **data_files: Any) -> HybrIKCritic:
        data_files = critic_options(f"hybrik-{arch}", data_files, _OPTIONS)
        return build_hybrik_critic(
            arch, body=data_files["smpl_model_path"], checkpoint=checkpoint, j_regressor_h36m=data_files.get("j_regressor_h36m"),
            h36m_mean_beta=data_files.get("h36m_mean_beta"), input_size=int(data_files.get("input_size") or INPUT_SIZE),
            box_scale=float(data_files.get("box_scale") or DEFAULT_BOX_SCALE), width=data_files.get("width"),
            num_layers=int(data_files.get("num_layers") or 34),
        )

    load.__name__ = f"load_hybrik_{arch}_critic"
    load.__doc__ = (
        f"Entry point ``posegen.critics: hybrik-{arch}``: :func:`build_hybrik_critic` with ``arch='{arch}'``; "
        f"the data files of :data:`adapters.protocol.DATA_FILES` (``smpl_model_path``, alias ``body``; "
        f"``smpl_mean_params`` is accepted and unused) and {list(_OPTIONS)}."
    )
    return load


load_hybrik_res34_critic = _loader("res34")
load_hybrik_hrw48_critic = _loader("hrw48")

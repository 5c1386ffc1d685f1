"""HMR/SPIN critic: the iterative SMPL regressor of SPIN (Kolotouros et al., ICCV 2019).

Architecture (after SPIN's ``models/hmr.py``, github.com/nkolot/SPIN): a torchvision ResNet
backbone (``resnet50`` in SPIN; ``resnet18``/``resnet34`` for the small project critic), global
average pooling, then 3 iterations of ``[features, pose 24x6D, betas 10, cam 3] -> fc1 -> drop1 ->
fc2 -> drop2 -> decpose/decshape/deccam`` adding residuals to the estimate, starting from the
``init_pose/init_shape/init_cam`` buffers. 6D -> rotation matrices by
:func:`posegen_ns.geometry.rot6d_to_matrix` (SPIN's layout). Module and parameter names equal SPIN's,
so the official ``model_checkpoint.pt`` (``{'model': state_dict, ...}``) loads with strict keys.

:class:`HMRCritic` wraps it as a :class:`~adapters.protocol.Critic`: differentiable crop -> ImageNet
normalisation -> HMR -> :class:`~posegen_ns.body.BodyModel` -> H36M-17 joints, root-relative,
in the camera frame (OpenCV axes), metres. The predicted global orientation is in that camera frame.
The camera ``(s, tx, ty)`` (weak perspective of the crop: ``x_n = s (X + tx)``, ``y_n = s (Y + ty)``
for root-relative joints, crop coordinates normalised to [-1, 1]; SPIN's convention) is returned
but not used for the 3D joints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from adapters.crop import crop_and_resize
from adapters.protocol import Critic, critic_options
from posegen_ns.atomic_io import torch_save
from posegen_ns.body import BodyModel, load_body_model
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix
from posegen_ns.labels import check_critic_values

IMG_NORM_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet RGB mean used by SPIN (``constants.IMG_NORM_MEAN``) and torchvision."""
IMG_NORM_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet RGB std used by SPIN (``constants.IMG_NORM_STD``)."""

NUM_JOINTS_SMPL = 24
NPOSE = NUM_JOINTS_SMPL * 6  # 144: 24 rotations in 6D
NUM_BETAS_HMR = 10
BACKBONES: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
"""Supported torchvision backbones -> pooled feature width."""

DEFAULT_CRITIC_PATH_NAME = "critics/hmr_default.pt"
"""Location of the project's pre-trained default critic inside ``cache_dir()``
(written by ``ns-posegen-pretrain-critic``; ``load_hmr_critic(checkpoint="default")``)."""


# ---- mean parameters ------------------------------------------------------------------------
def default_mean_params() -> dict[str, Tensor]:
    """Initial estimate of the default critic: rest pose for joints 1..23, root rotated by pi
    about x (the SMPL body upright and facing an OpenCV camera, y down / z forward), zero betas,
    camera ``(s, tx, ty) = (0.9, 0, 0)``.

    Returns ``{'pose': (144,) 6D, 'shape': (10,), 'cam': (3,)}`` (float32).
    """
    rotvecs = torch.zeros(NUM_JOINTS_SMPL, 3)
    rotvecs[0, 0] = math.pi
    pose = matrix_to_rot6d(axis_angle_to_matrix(rotvecs)).reshape(NPOSE)
    return {"pose": pose, "shape": torch.zeros(NUM_BETAS_HMR), "cam": torch.tensor([0.9, 0.0, 0.0])}


def load_mean_params(path: str | Path) -> dict[str, Tensor]:
    """Read SPIN's ``smpl_mean_params.npz`` (keys ``pose`` (144,) 6D, ``shape`` (10,), ``cam`` (3,)).

    Raises:
        PoseGenInputError: missing file, or a key absent or of the wrong size.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoseGenInputError(
            f"SMPL mean parameters {path} do not exist; smpl_mean_params.npz comes with SPIN's data "
            "(github.com/nkolot/SPIN, fetch_data.sh), or omit it to use the default initialisation."
        )
    sizes = {"pose": NPOSE, "shape": NUM_BETAS_HMR, "cam": 3}
    out = {}
    with np.load(path) as data:
        for key, n in sizes.items():
            if key not in data.files or data[key].size != n:
                got = tuple(data[key].shape) if key in data.files else "missing"
                raise PoseGenInputError(f"{path}: field '{key}' is {got}; SPIN's smpl_mean_params.npz has ({n},).")
            out[key] = torch.as_tensor(data[key].reshape(n), dtype=torch.float32)
    return out


# ---- the regressor --------------------------------------------------------------------------
class HMR(nn.Module):
    """SPIN's HMR regressor with a torchvision ResNet backbone.

    Args:
        backbone: ``"resnet50"`` (SPIN's layout), ``"resnet34"`` or ``"resnet18"``.
        mean_params: path to ``smpl_mean_params.npz``, a dict as :func:`default_mean_params`
            returns, or ``None`` for :func:`default_mean_params`.
        n_iter: regression iterations (3 in SPIN).

    Input ``(B, 3, S, S)`` normalised images (any S >= 32; SPIN uses 224, where the global average
    pool equals SPIN's ``AvgPool2d(7)``). Output ``(rotmat (B, 24, 3, 3), betas (B, 10),
    cam (B, 3))``.
    """

    def __init__(self, backbone: str = "resnet50", mean_params: str | Path | dict[str, Tensor] | None = None, n_iter: int = 3):
        super().__init__()
        if backbone not in BACKBONES:
            raise PoseGenInputError(f"backbone {backbone!r} is not supported; use one of {sorted(BACKBONES)}.")
        self.backbone = backbone
        self.n_iter = n_iter
        net = getattr(torchvision.models, backbone)(weights=None)  # He init for convs, BN (1, 0)
        # Same attribute names as SPIN (and torchvision), without torchvision's classifier `fc`.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # parameter-free, so the state dict matches SPIN
        feat = BACKBONES[backbone]
        self.fc1 = nn.Linear(feat + NPOSE + NUM_BETAS_HMR + 3, 1024)
        self.drop1 = nn.Dropout()
        self.fc2 = nn.Linear(1024, 1024)
        self.drop2 = nn.Dropout()
        self.decpose = nn.Linear(1024, NPOSE)
        self.decshape = nn.Linear(1024, NUM_BETAS_HMR)
        self.deccam = nn.Linear(1024, 3)
        for dec in (self.decpose, self.decshape, self.deccam):  # small initial residuals, as SPIN
            nn.init.xavier_uniform_(dec.weight, gain=0.01)
        if mean_params is None:
            mean_params = default_mean_params()
        elif not isinstance(mean_params, dict):
            mean_params = load_mean_params(mean_params)
        self.register_buffer("init_pose", mean_params["pose"].reshape(1, NPOSE).float().clone())
        self.register_buffer("init_shape", mean_params["shape"].reshape(1, NUM_BETAS_HMR).float().clone())
        self.register_buffer("init_cam", mean_params["cam"].reshape(1, 3).float().clone())

    def features(self, x: Tensor) -> Tensor:
        """Backbone: ``(B, 3, S, S)`` -> pooled features ``(B, F)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, 3, S, S)`` normalised -> ``rotmat (B, 24, 3, 3)``, ``betas (B, 10)``, ``cam (B, 3)``."""
        B = x.shape[0]
        xf = self.features(x)
        pose = self.init_pose.expand(B, -1)
        shape = self.init_shape.expand(B, -1)
        cam = self.init_cam.expand(B, -1)
        for _ in range(self.n_iter):
            h = self.drop2(self.fc2(self.drop1(self.fc1(torch.cat([xf, pose, shape, cam], dim=1)))))
            pose = self.decpose(h) + pose
            shape = self.decshape(h) + shape
            cam = self.deccam(h) + cam
        rotmat = rot6d_to_matrix(pose.reshape(B, NUM_JOINTS_SMPL, 6))  # (B, 24, 3, 3)
        return rotmat, shape, cam


def load_backbone_weights(model: HMR, path: str | Path) -> None:
    """Load torchvision ImageNet weights (a ResNet ``state_dict`` file) into the backbone of
    ``model``; the classifier ``fc.*`` is ignored, every other backbone key must match.

    Raises:
        PoseGenInputError: missing, unreadable (e.g. truncated) or non-state-dict file, or keys that do not fit the backbone.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoseGenInputError(f"backbone weights {path} do not exist; pass a torchvision {model.backbone} state_dict file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise PoseGenInputError(
            f"backbone weights {path} cannot be read ({_first_line(err)}); the file is damaged or truncated: "
            f"download it again (a torchvision {model.backbone} state_dict, e.g. resnet18-f37072fd.pth)."
        ) from err
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise PoseGenInputError(f"backbone weights {path} are not a state_dict (a dict of tensors); pass a torchvision {model.backbone} state_dict file.")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    backbone_keys = {k for k in model.state_dict() if k.startswith(("conv1.", "bn1.", "layer"))}
    missing, unexpected = sorted(backbone_keys - state.keys()), sorted(state.keys() - backbone_keys)
    if missing or unexpected:
        raise PoseGenInputError(
            f"{path} does not fit a {model.backbone} backbone: missing {missing[:8]}, unexpected {unexpected[:8]}."
        )
    model.load_state_dict(state, strict=False)


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- checkpoints in SPIN's layout -----------------------------------------------------------
def save_spin_checkpoint(model: HMR, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{'model': model.state_dict(), **extra}`` to ``path`` (SPIN's checkpoint layout), atomically
    (:func:`posegen_ns.atomic_io.torch_save`).

    ``extra`` holds plain metadata (this project writes ``{'posegen': {'backbone', 'input_size',
    'body', ...}}``); it may not contain ``'model'``.
    """
    extra = dict(extra or {})
    if "model" in extra:
        raise ValueError("extra may not contain the key 'model'")
    # atomic: a process killed while saving leaves the old file or none, never a truncated one
    return torch_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}, path)


def read_spin_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a SPIN-layout checkpoint (tensors and plain metadata only; ``weights_only`` loading).

    Raises:
        PoseGenInputError: missing/unreadable file or no ``'model'`` state dict in it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoseGenInputError(
            f"critic checkpoint {path} does not exist; pass SPIN's model_checkpoint.pt (github.com/nkolot/SPIN, "
            "fetch_data.sh) or a file written by ns-posegen-pretrain-critic."
        )
    if path.stat().st_size == 0:
        raise PoseGenInputError(
            f"critic checkpoint {path} is empty (0 bytes: a save that was killed?); delete it and train or download it again."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise PoseGenInputError(
            f"critic checkpoint {path} cannot be read ({_first_line(err)}); is it a SPIN checkpoint? (A truncated file "
            "from an interrupted save or download: delete it and train or download it again.)"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise PoseGenInputError(
            f"critic checkpoint {path} has no 'model' state dict (SPIN's layout is {{'model': state_dict, ...}})."
        )
    return ckpt


def load_spin_checkpoint(path: str | Path, model: HMR) -> dict[str, Any]:
    """Load the ``'model'`` state dict of ``path`` into ``model`` with strict key matching.

    A uniform ``module.`` prefix (DataParallel) is stripped. BatchNorm ``num_batches_tracked``
    counters absent from very old files are tolerated (they do not affect the outputs).

    Returns:
        The checkpoint's other entries (e.g. SPIN's ``epoch``, this project's ``posegen``).

    Raises:
        PoseGenInputError: missing or unexpected keys (all listed), or shape mismatches (named),
            naming the file.
    """
    ckpt = read_spin_checkpoint(path)
    state = ckpt["model"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise PoseGenInputError(
            f"critic checkpoint {path} does not match the HMR({model.backbone}) layout: missing keys {missing}, "
            f"unexpected keys {unexpected}. Pass the matching backbone, or a SPIN model_checkpoint.pt."
        )
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise PoseGenInputError(
            f"critic checkpoint {path} has tensors of the wrong shape for HMR({model.backbone}): {wrong[:8]}; "
            "pass the backbone the file was trained with."
        )
    model.load_state_dict(state, strict=False)  # keys checked above
    return {k: v for k, v in ckpt.items() if k != "model"}


# ---- the critic -----------------------------------------------------------------------------
@dataclass
class HMRPrediction:
    """Output of :meth:`HMRCritic.predict`. B = batch; camera frame (OpenCV axes), metres."""

    joints: Tensor  # (B, 17, 3) H36M-17, root-relative (pelvis at 0)
    rotmat: Tensor  # (B, 24, 3, 3) global orientation (camera frame) + 23 body joints
    betas: Tensor  # (B, 10) shape coefficients (the body uses the first body.num_betas)
    cam: Tensor  # (B, 3) weak perspective (s, tx, ty): crop coords in [-1, 1] = s * (joints[..., :2] + (tx, ty))
    vertices: Tensor  # (B, V, 3) root-relative mesh


class HMRCritic(Critic):
    """SPIN/HMR as a critic: crop -> normalise -> :class:`HMR` -> body -> H36M-17 (root-relative).

    Args:
        hmr: the regressor.
        body: the body model its parameters drive (SMPL for SPIN's official weights).
        input_size: crop side in pixels (224 for SPIN).
    """

    joint_set = "h36m17"
    differentiable = True

    def __init__(self, hmr: HMR, body: BodyModel, input_size: int = 224):
        super().__init__()
        self.hmr = hmr
        self.body = body
        self.input_size = int(input_size)
        self.register_buffer("img_mean", torch.tensor(IMG_NORM_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("img_std", torch.tensor(IMG_NORM_STD).reshape(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S)`` RGB in [0, 1] -> ImageNet-normalised network input."""
        return (images - self.img_mean) / self.img_std

    def crop(self, images: Tensor, boxes: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] and boxes ``(B, 4)`` -> normalised crops ``(B, 3, S, S)``."""
        return self.normalize(crop_and_resize(images, boxes, self.input_size))

    def predict(self, images: Tensor, boxes: Tensor) -> HMRPrediction:
        """Full prediction (joints and SMPL parameters) for ``images (B, 3, H, W)`` in [0, 1] and
        ``boxes (B, 4)`` xyxy pixels."""
        rotmat, betas, cam = self.hmr(self.crop(images, boxes))
        check_critic_values(self, "SMPL parameters", rotmat, betas)  # a broken critic, not a bad pose
        out = self.body(
            body_pose=rotmat[:, 1:], global_orient=rotmat[:, :1], betas=betas[:, : self.body.num_betas]
        )
        root = out.joints_h36m[:, :1]  # (B, 1, 3) H36M pelvis
        return HMRPrediction(
            joints=out.joints_h36m - root, rotmat=rotmat, betas=betas, cam=cam, vertices=out.vertices - root
        )

    def forward(self, images: Tensor, boxes: Tensor, return_params: bool = False) -> Tensor | tuple[Tensor, HMRPrediction]:
        """Root-relative H36M-17 joints ``(B, 17, 3)`` (metres, camera frame); with
        ``return_params=True`` also the :class:`HMRPrediction`."""
        pred = self.predict(images, boxes)
        return (pred.joints, pred) if return_params else pred.joints


def build_hmr_critic(
    backbone: str = "resnet50",
    input_size: int = 224,
    body: BodyModel | str | Path = "open",
    smpl_mean_params: str | Path | None = None,
    j_regressor_h36m: str | Path | None = None,
) -> HMRCritic:
    """A randomly initialised :class:`HMRCritic` (ResNet weights random unless loaded later)."""
    if not isinstance(body, BodyModel):
        body = load_body_model(body, j_regressor_h36m=j_regressor_h36m)
    return HMRCritic(HMR(backbone, smpl_mean_params), body, input_size)


def default_critic_path() -> Path:
    """Where ``ns-posegen-pretrain-critic`` writes the default critic by default."""
    from posegen_ns.body.smpl_files import cache_dir

    return cache_dir() / DEFAULT_CRITIC_PATH_NAME


_HMR_OPTIONS = ("backbone", "input_size")
"""Options of :func:`load_hmr_critic` besides the data files of :data:`adapters.protocol.DATA_FILES`."""


def load_hmr_critic(checkpoint: str | Path | None = None, **data_files: Any) -> HMRCritic:
    """Entry point ``posegen.critics: hmr``: an :class:`HMRCritic`, optionally with weights.

    Args:
        checkpoint: ``None`` (random weights), ``"default"`` (the project's pre-trained critic,
            see :func:`default_critic_path`), or a SPIN-layout file: SPIN's official
            ``model_checkpoint.pt`` or one written by ``ns-posegen-pretrain-critic``.
        **data_files: the data files of :data:`adapters.protocol.DATA_FILES`: ``smpl_model_path``
            (alias ``body``: BodyModel, ``"open"``, ``"tiny"`` or an SMPL file path),
            ``j_regressor_h36m`` (SPIN's ``J_regressor_h36m.npy``), ``smpl_mean_params``
            (``h36m_mean_beta`` is accepted and unused); and ``backbone``, ``input_size``. Files
            written by this project record backbone, input size and body; SPIN's official file
            implies ``resnet50``/224 and needs ``smpl_model_path=`` the SMPL neutral model.

    Raises:
        PoseGenInputError: unknown options, missing files, or a checkpoint that does not fit.
    """
    given = critic_options("hmr", data_files, _HMR_OPTIONS)
    meta: dict[str, Any] = {}
    if checkpoint is not None:
        if str(checkpoint) == "default":
            checkpoint = default_critic_path()
            if not checkpoint.is_file():
                raise PoseGenInputError(
                    f"the default critic {checkpoint} has not been built yet; run `ns-posegen-pretrain-critic` "
                    "(or pass checkpoint=PATH to a SPIN model_checkpoint.pt)."
                )
        meta = dict(read_spin_checkpoint(checkpoint).get("posegen", {}))
        if given["smpl_model_path"] is None and "body" not in meta:
            raise PoseGenInputError(
                f"critic checkpoint {checkpoint} does not say which body it predicts for; SPIN's official weights "
                "predict SMPL: pass smpl_model_path=PATH/TO/SMPL_NEUTRAL.pkl (and j_regressor_h36m=J_regressor_h36m.npy)."
            )
    recorded = {"smpl_model_path" if k == "body" else k: v for k, v in meta.items()}  # the file records its body as 'body'
    opts = {k: v if v is not None else recorded.get(k) for k, v in given.items()}
    critic = build_hmr_critic(
        backbone=opts["backbone"] or "resnet50",
        input_size=int(opts["input_size"] or 224),
        body=opts["smpl_model_path"] if opts["smpl_model_path"] is not None else "open",
        smpl_mean_params=opts["smpl_mean_params"],
        j_regressor_h36m=opts["j_regressor_h36m"],
    )
    if checkpoint is not None:
        load_spin_checkpoint(checkpoint, critic.hmr)
    return critic.eval_mode()

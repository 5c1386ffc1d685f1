"""The hard-sample viewer (posegen_ns.viewer): the 2D overlay, the skeleton trees, the browser's
actions without a viewer, and the panel in nerfstudio's viewer driven over viser's websocket as a
browser would drive it."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from tiny_runs import tiny_pipeline
import torch

from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, LSP_JOINT_NAMES, SKELETON_PARENTS, SMPL_JOINT_NAMES
from posegen_ns.errors import PoseGenInputError
from posegen_ns.viewer import GT_COLOR, PRED_COLOR, overlay_skeletons

# ------------------------------------------------------------------------------------------ 2D overlay


def test_overlay_draws_bones_at_the_pixels_of_the_joints():
    """A vertical GT bone in column 2 and a vertical predicted bone in column 17 of a 20 x 20 image:
    joints at pixel centres (x + 0.5), so the bones cover exactly those columns, rows 2..17."""
    image = np.zeros((20, 20, 3), np.uint8)
    gt = np.array([[2.5, 2.5], [2.5, 17.5]])
    pred = np.array([[17.5, 2.5], [17.5, 17.5]])
    out = overlay_skeletons(image, gt, pred, parents=(-1, 0))
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert (out[2:18, 2] == GT_COLOR).all() and (out[2:18, 17] == PRED_COLOR).all()
    assert (out[:, 6:14] == 0).all()  # nothing between the skeletons
    assert (out[19] == 0).all() and (out[0] == 0).all()  # nor beyond the ends (dots have radius 1)
    assert (image == 0).all()  # the input is not modified


def test_overlay_prediction_on_top_float_input_and_missing_joints():
    image = np.full((12, 12, 3), 0.5, np.float32)  # float in [0, 1] -> uint8
    gt = np.array([[6.5, 1.5], [6.5, 10.5]])
    pred = np.array([[6.5, 1.5], [np.nan, np.nan]])  # the critic lost the second joint
    out = overlay_skeletons(image, gt, pred, parents=(-1, 0))
    assert (out[1, 6] == PRED_COLOR).all()  # the shared joint: prediction drawn last
    assert (out[5, 6] == GT_COLOR).all()  # the GT bone; no predicted bone to a NaN joint
    assert (out[6, 0] == 128).all()  # background converted from 0.5
    with pytest.raises(PoseGenInputError, match="joints_2d_pred must be"):
        overlay_skeletons(image, gt, pred[:1], parents=(-1, 0))
    with pytest.raises(PoseGenInputError, match="parents must be"):
        overlay_skeletons(image, gt, pred, parents=(-1, 2))


@pytest.mark.parametrize("joint_set, names", [("smpl24", SMPL_JOINT_NAMES), ("h36m17", H36M_JOINT_NAMES), ("lsp14", LSP_JOINT_NAMES)])
def test_skeleton_trees(joint_set, names):
    """One root, no cycles, and the limbs connect the joints their names say."""
    parents = SKELETON_PARENTS[joint_set]
    assert len(parents) == len(names) and sum(p == -1 for p in parents) == 1
    for j in range(len(parents)):
        seen, k = set(), j
        while parents[k] != -1:
            assert k not in seen
            seen.add(k)
            k = parents[k]
    parent = {names[j]: names[p] for j, p in enumerate(parents) if p >= 0}
    for side in ("left", "right"):
        assert parent[f"{side}_knee"] == f"{side}_hip" and parent[f"{side}_ankle"] == f"{side}_knee"
        assert parent[f"{side}_elbow"] == f"{side}_shoulder" and parent[f"{side}_wrist"] == f"{side}_elbow"


# ------------------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny PoseGenPipeline (tiny body, 40 px capture, untrained field) built in-process."""
    return tiny_pipeline(tmp_path_factory.mktemp("viewer"))


def test_browser_draws_selects_and_exports_without_a_viewer(pipeline, tmp_path):
    from posegen_ns.body import load_body_model

    browser = pipeline.hard_samples
    assert not any("hard_samples" in k for k in pipeline.state_dict())  # checkpoints are unchanged
    browser.batch, browser._draws = None, 0
    with pytest.raises(PoseGenInputError, match="Draw batch"):
        browser.select(0)
    with pytest.raises(PoseGenInputError, match=r"Batch size must be in \[1, 64\]"):
        browser.draw_batch(0)
    batch = browser.draw_batch(3)
    assert len(batch) == 3 and batch.joint_set == pipeline.critic.joint_set
    for kind in ("hard", "prior"):
        assert batch.images[kind].shape == (3, 40, 40, 3) and np.isfinite(batch.labels[kind]["critic_error_mm"]).all()
    np.testing.assert_array_equal(batch.labels["hard"]["sample_index"], [0, 1, 2])
    # the shown sample drives the main render
    assert browser.index == 0
    np.testing.assert_allclose(pipeline.model.viewer_pose[0].numpy(), batch.labels["hard"]["body_pose"][0])
    browser.select(2, kind="prior")
    np.testing.assert_allclose(pipeline.model.viewer_pose[0].numpy(), batch.labels["prior"]["body_pose"][2])
    np.testing.assert_allclose(pipeline.model.viewer_pose[1].numpy(), batch.labels["prior"]["global_orient"][2])
    assert browser.step(1) == 0 and browser.step(-1) == 2  # wraps around
    assert browser.shown_error.value.startswith(f"{batch.labels['prior']['critic_error_mm'][2]:.1f}")
    ratio = batch.labels["hard"]["critic_error_mm"][2] / batch.labels["prior"]["critic_error_mm"][2]
    assert browser.shown_hardness.value.startswith(f"hard / prior pair x{ratio:.2f}")
    with pytest.raises(PoseGenInputError, match=r"Sample must be in \[0, 2\]"):
        browser.select(3)
    # the GT skeleton placed in the world is the body model's, recomputed independently
    L = batch.labels["prior"]
    body = load_body_model("tiny")
    out = body(*(torch.from_numpy(L[k][2:3]) for k in ("body_pose", "global_orient")),
               torch.from_numpy(L["betas"][2:3, : body.num_betas]), torch.from_numpy(L["transl"][2:3]))
    joints = browser.critic_joints(2)
    assert batch.joint_set == "h36m17"
    np.testing.assert_allclose(joints["gt_world"], out.joints_h36m[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(joints["gt_2d"], L["joints_h36m_2d"][2], atol=1e-3)
    # the prediction sits at the GT pelvis and keeps its root-relative shape
    np.testing.assert_allclose(joints["pred_world"][0], joints["gt_world"][0], atol=1e-5)
    np.testing.assert_allclose(joints["pred_cam"] - joints["pred_cam"][0], L["critic_pred"][2] - L["critic_pred"][2][0], atol=1e-5)
    assert browser.overlay(2).shape == (280, 280, 3)  # 40 px enlarged 7x to >= 256
    # export: the batch on screen, written by ns-posegen-export's writer
    with pytest.raises(PoseGenInputError, match="export_root"):
        browser.export_batch()
    browser.export_root = tmp_path / "exports"
    folder = browser.export_batch()
    assert folder == tmp_path / "exports" / "batch-0000"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "prior" and manifest["num_samples"] == 3 and manifest["seed"] == batch.seed
    labels = np.load(folder / "labels.npz")
    np.testing.assert_allclose(labels["body_pose"], L["body_pose"], atol=1e-6)
    np.testing.assert_allclose(labels["critic_error_mm"], L["critic_error_mm"], rtol=1e-4)
    assert browser.export_batch() == folder  # the same batch is not written twice
    browser.select(0, kind="hard")
    assert browser.export_batch() == tmp_path / "exports" / "batch-0001"
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["batch-0000", "batch-0001"]  # no partial left
    browser.export_root = None


def test_initial_camera_frames_the_whole_body_as_the_capture_cameras_do(pipeline):
    """The viewer opens where the capture's first training camera stands, looking at the middle of the body in
    ``viewer_pose`` with world +y up and that camera's field of view: the whole body is in the picture and fills
    it about as much as in the capture's images (viser's default camera, 0.5 m from the world origin at the feet,
    showed the shoes)."""
    from posegen_ns.geometry import look_at_extrinsics

    browser = pipeline.hard_samples
    model, capture = pipeline.model, pipeline.datamanager.train_capture
    saved = model.viewer_pose
    model.viewer_pose = (capture.body_pose[0].float(), capture.global_orient[0].float(), capture.transl[0].float())
    try:
        cam = browser.initial_camera()
    finally:
        model.viewer_pose = saved
    c = cam["camera"]
    R0, t0 = capture.R[c].double(), capture.t[c].double()
    np.testing.assert_allclose(cam["position"], (-R0.T @ t0).numpy(), atol=1e-9)
    assert cam["up"] @ np.array([0.0, 1.0, 0.0]) > 0.9  # world +y is up on screen
    H, W = capture.height, capture.width
    assert cam["fov"] == pytest.approx(2 * np.arctan(H / (2 * float(capture.K[c, 1, 1]))))
    # the body as that view shows it: every vertex inside the image, the body spanning most of its height
    body = model.body
    out = body(capture.body_pose[:1].float(), capture.global_orient[:1].float(), capture.betas[None].float(), capture.transl[:1].float())
    verts = out.vertices[0].double()
    R, t = look_at_extrinsics(torch.from_numpy(cam["position"])[None], torch.from_numpy(cam["look_at"])[None],
                              torch.from_numpy(cam["up"])[None])
    cam_pts = verts @ R[0].T + t[0]
    f = H / (2 * np.tan(cam["fov"] / 2))
    u = f * cam_pts[:, 0] / cam_pts[:, 2] + W / 2
    v = f * cam_pts[:, 1] / cam_pts[:, 2] + H / 2
    assert (cam_pts[:, 2] > 0).all() and (u >= 0).all() and (u < W).all() and (v >= 0).all() and (v < H).all()
    assert float(v.max() - v.min()) > 0.4 * H  # framed, not a distant speck
    # the orbit centre is the middle of the body, not the feet
    y = verts[:, 1]
    assert abs(cam["look_at"][1] - float(y.min() + y.max()) / 2) < 0.1 * float(y.max() - y.min())
    # and the view is the capture camera's own: the capture's joints land where its labels put them
    uv_capture = (capture.K[c].double() @ (out.joints[0].double() @ R0.T + t0).T).T
    cam_joints = out.joints[0].double() @ R[0].T + t[0]
    np.testing.assert_allclose((f * cam_joints[:, 1] / cam_joints[:, 2] + H / 2).numpy(),
                               (uv_capture[:, 1] / uv_capture[:, 2]).numpy(), atol=0.05 * H)


def wait_until(condition, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for the viewer")
        time.sleep(0.05)


class _BrowserClient:
    """A minimal viser client: the websocket messages a browser tab sends and receives (viser 0.2.7:
    msgpack; the server sends batches of message dicts, the client sends one dict per message)."""

    def __init__(self, port: int):
        import msgspec
        from websockets.sync.client import connect

        self._msgspec = msgspec
        self._connection = connect(f"ws://127.0.0.1:{port}", max_size=None)
        self.messages: list[dict] = []
        self._lock = threading.RLock()

    def __enter__(self) -> "_BrowserClient":
        self.ws = self._connection.__enter__()
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._connection.__exit__(*exc)

    def _read(self) -> None:
        try:
            while True:
                decoded = self._msgspec.msgpack.decode(self.ws.recv())
                with self._lock:
                    self.messages.extend(decoded if isinstance(decoded, list) else [decoded])
        except Exception:  # connection closed
            return

    def send(self, **message) -> None:
        self.ws.send(self._msgspec.msgpack.encode(message))

    def wait_for(self, predicate, timeout: float = 60.0) -> list[dict]:
        """The received messages that satisfy ``predicate``, once there is at least one."""
        found: list[dict] = []

        def any_found() -> bool:
            with self._lock:
                found[:] = [m for m in self.messages if predicate(m)]
            return bool(found)

        wait_until(any_found, timeout)
        return found

    def count(self, predicate) -> int:
        with self._lock:
            return sum(1 for m in self.messages if predicate(m))


def test_viewer_panel_over_websocket(pipeline, tmp_path):
    """nerfstudio's viewer on 127.0.0.1 with the pipeline; a websocket client sees the panel and
    presses its buttons the way the web page does, and gets the samples, skeletons and exports."""
    import socket

    from nerfstudio.configs.base_config import ViewerConfig
    from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO, Viewer
    from nerfstudio.viewer.viewer_elements import ViewerElement

    browser = pipeline.hard_samples
    browser.batch = None
    pipeline.model.viewer_pose = tuple(torch.zeros_like(x) for x in pipeline.model.viewer_pose)  # rest pose
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    run.mkdir()
    viewer = Viewer(ViewerConfig(websocket_host="127.0.0.1", websocket_port=port, quit_on_train_completion=True),
                    log_filename=run / "viewer_log_filename.txt", datapath=pipeline.datamanager.get_datapath(),
                    pipeline=pipeline, train_lock=threading.Lock())
    try:
        with _BrowserClient(viewer.viser_server.get_port()) as client:
            # the page announces its camera first (viser registers the client then)
            client.send(type="ViewerCameraMessage", wxyz=[1.0, 0.0, 0.0, 0.0], position=[0.0, 0.0, -30.0], fov=0.8,
                        aspect=1.0, look_at=[0.0, 0.0, 0.0], up_direction=[0.0, -1.0, 0.0])
            client.wait_for(lambda m: m.get("label") == "Status")
            # the browser opens framing the body (the capture's first training camera), not at viser's default camera
            start = browser.initial_camera()
            S = VISER_NERFSTUDIO_SCALE_RATIO
            for kind, key, value in (("SetCameraPositionMessage", "position", start["position"] * S),
                                     ("SetCameraLookAtMessage", "look_at", start["look_at"] * S),
                                     ("SetCameraUpDirectionMessage", "position", start["up"])):
                client.wait_for(lambda m, kind=kind, key=key, value=value: m["type"] == kind
                                and np.allclose(m[key], value, atol=1e-4))
            client.wait_for(lambda m: m["type"] == "SetCameraFovMessage" and abs(m["fov"] - start["fov"]) < 1e-6)
            folder = client.wait_for(lambda m: m["type"] == "GuiAddFolderMessage" and m["label"] == "hard_samples")[0]
            ids = {}
            for label in ("Sample kind", "Batch size", "Draw batch", "Previous sample", "Sample", "Next sample",
                          "View from sample camera", "Critic MPJPE (mm)", "Hardness", "Export batch", "Status"):
                (m,) = client.wait_for(lambda m, label=label: m.get("label") == label and m["type"].startswith("GuiAdd"))
                assert m["container_id"] == folder["id"], label
                ids[label] = m["id"]
            assert client.wait_for(lambda m: m.get("id") == ids["Sample kind"])[0]["options"] == ["hard", "prior"]

            def updated(label: str, key: str = "value"):
                return lambda m: m["type"] == "GuiUpdateMessage" and m["id"] == ids[label] and key in m["updates"]

            def click(label: str) -> None:
                client.send(type="GuiUpdateMessage", id=ids[label], updates={"value": True})

            renders_before = client.count(lambda m: m["type"] == "BackgroundImageMessage")
            client.send(type="GuiUpdateMessage", id=ids["Batch size"], updates={"value": 2})
            wait_until(lambda: browser.batch_size.value == 2, timeout=10)
            click("Draw batch")
            # what the page receives: the error text, the overlay image, both skeletons and the sample camera
            client.wait_for(updated("Critic MPJPE (mm)"), timeout=120)  # sent once sample 0 is shown
            batch = browser.batch
            assert len(batch) == 2
            for kind in ("hard", "prior"):
                assert np.isfinite(batch.labels[kind]["critic_error_mm"]).all()
            error = f"{batch.labels['hard']['critic_error_mm'][0]:.1f}"
            assert client.wait_for(updated("Critic MPJPE (mm)"))[-1]["updates"]["value"].startswith(error)
            assert pipeline.model.viewer_pose[0].abs().sum() > 0  # no longer the rest pose
            np.testing.assert_allclose(pipeline.model.viewer_pose[0].numpy(), batch.labels["hard"]["body_pose"][0])
            client.wait_for(lambda m: m["type"] == "GuiUpdateMessage"
                            and "data:image/png;base64," in str(m["updates"].get("markdown", "")))
            client.wait_for(lambda m: m["type"] == "CameraFrustumMessage" and m["image_binary"] is not None)
            bones = sum(p >= 0 for p in SKELETON_PARENTS[batch.joint_set])
            for name in ("gt", "pred"):
                prefix = f"/hard_samples/{name}/bone_"
                spline = lambda m, prefix=prefix: m["type"] == "CatmullRomSplineMessage" and m["name"].startswith(prefix)  # noqa: E731
                wait_until(lambda spline=spline: client.count(spline) >= bones)
                client.wait_for(lambda m, n=name: m["type"] == "PointCloudMessage" and m["name"] == f"/hard_samples/{n}/joints")
            # the main render is redrawn (with the sample's pose)
            wait_until(lambda: client.count(lambda m: m["type"] == "BackgroundImageMessage") > renders_before, timeout=120)

            click("Next sample")
            client.wait_for(lambda m: updated("Sample")(m) and m["updates"]["value"] == 1)
            assert browser.index == 1
            np.testing.assert_allclose(pipeline.model.viewer_pose[0].numpy(), batch.labels["hard"]["body_pose"][1])

            click("View from sample camera")
            cam = browser.sample_camera(1)
            client.wait_for(lambda m: m["type"] == "SetCameraPositionMessage"  # after the initial camera's
                            and np.allclose(m["position"], cam["position"] * VISER_NERFSTUDIO_SCALE_RATIO, atol=1e-5))
            client.wait_for(lambda m: m["type"] == "SetCameraFovMessage" and m["fov"] == pytest.approx(float(cam["fov"])))

            click("Export batch")
            client.wait_for(lambda m: updated("Status")(m) and m["updates"]["value"].startswith("exported"), timeout=120)
            manifest = json.loads((run / "viewer_exports" / "batch-0000" / "manifest.json").read_text())
            assert manifest["num_samples"] == 2 and manifest["kind"] == "hard" and manifest["seed"] == batch.seed
    finally:
        viewer.viser_server.stop()
        # stop and join the viewer's render threads (daemons): one still inside a torch op when the interpreter
        # exits aborts the whole pytest run ("terminate called without an active exception", exit 134)
        from nerfstudio.viewer.render_state_machine import RenderStateMachine

        for thread in [t for t in threading.enumerate() if isinstance(t, RenderStateMachine)]:
            thread.running = False
            thread.join(timeout=60)
            assert not thread.is_alive(), "a viewer render thread did not stop"
        for element in vars(browser).values():  # detach the panel from the stopped server
            if isinstance(element, ViewerElement):
                element.gui_handle = None
        del browser.viewer_control.viser_server, browser.viewer_control.viewer

"""Field quality pieces: pose-dependent residual, densify/prune with consistent optimizers, resizable
checkpoints, per-frame pose refinement, the novel-view split. Tiny body, 24 px images."""

from __future__ import annotations

import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.errors import PoseGenInputError
from posegen_ns.field.human_field import PER_GAUSSIAN_PARAMETERS, HumanGaussians, PoseResidual


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory):
    from posegen_ns.data.default_capture import build_default_capture

    out = tmp_path_factory.mktemp("fq") / "capture"
    return build_default_capture(out, body="tiny", num_cameras=3, resolution=24, frame_stride=48, max_frames_per_clip=2, verbose=False)


def _datamanager(capture_dir, **kw):
    from posegen_ns.datamanager import PoseGenDataManagerConfig

    return PoseGenDataManagerConfig(data=capture_dir, images_per_batch=2, **kw).setup()


def _model(dm, **kw):
    from posegen_ns.model import PoseGenHumanModelConfig

    torch.manual_seed(0)
    return PoseGenHumanModelConfig(num_gaussians=200, **kw).setup(
        scene_box=dm.train_dataset.scene_box, num_train_data=len(dm.train_dataset), capture=dm.train_capture
    )


def _adam(model):
    return [torch.optim.Adam(params, lr=1e-2) for params in model.get_param_groups().values()]


def _step(model, dm, opts, step=0):
    for o in opts:
        o.zero_grad()
    _, batch = dm.next_train(step)
    out = model.render_batch(batch)
    loss = sum(model.get_loss_dict(out, batch).values())
    loss.backward()
    for o in opts:
        o.step()
    return batch


def test_pose_residual_is_zero_at_init_bounded_and_gets_gradients():
    body = load_body_model("tiny")
    plain = HumanGaussians(body, num_gaussians=150)
    with_res = HumanGaussians(body, num_gaussians=150, pose_residual=PoseResidual(max_offset=0.02))
    pose = 0.4 * torch.randn(2, 69, generator=torch.Generator().manual_seed(1))
    args = (pose, torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, 3))
    torch.testing.assert_close(with_res.pose(*args)[0], plain.pose(*args)[0], atol=0, rtol=0)
    means, _, _, nonrigid = with_res.pose_with_residual(*args)
    assert nonrigid.shape == (2, 150, 3) and nonrigid.abs().max() == 0
    means.square().sum().backward()
    g = with_res.pose_residual.out.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # once trained it depends on the pose, and each coordinate stays within max_offset
    res = with_res.pose_residual
    with torch.no_grad():
        res.out.weight.normal_(0, 0.5)
        off = res(with_res.canonical_means, pose)
        assert (off[0] - off[1]).abs().max() > 1e-4
        res.out.bias.fill_(50.0)
        res.out.weight.normal_(0, 5.0)
        off = res(with_res.canonical_means, pose)
    assert off.abs().max() <= 0.02 + 1e-7 and off.abs().max() > 0.019


def test_densify_and_prune_change_n_and_keep_the_optimizer_consistent(capture_dir):
    dm = _datamanager(capture_dir)
    model = _model(dm, densify_fraction=0.25, max_num_gaussians=1000, prune_opacity=0.05)
    f = model.field
    opts = _adam(model)
    _step(model, dm, opts)
    model.accumulate_gradients(0)
    with torch.no_grad():
        f.opacity_logits[:10] = -10.0  # 10 nearly transparent Gaussians to prune
        f.log_scales[10:] = torch.where(torch.arange(190)[:, None] % 2 == 0, -2.0, -8.0)  # half big (split), half small
    big_before = f.log_scales.exp().amax(-1) > model.config.split_scale_factor * f.init_scale
    old_params = [getattr(f, n) for n in PER_GAUSSIAN_PARAMETERS]
    old_avg = {n: opts[0].state[getattr(f, n)]["exp_avg"].clone() for n in ("offsets", "log_scales")}
    old_face, old_means = f.face_idx.clone(), f.canonical_means.clone()
    counts = model.densify_and_prune(opts, step=1)
    N = f.num_gaussians
    assert counts["pruned"] == 10 and counts["cloned"] + counts["split"] == 50  # 25 % of 200
    assert N == 200 - 10 + counts["cloned"] + counts["split"] and counts["num_gaussians"] == N
    assert counts["split"] > 0 and counts["cloned"] > 0
    assert all(getattr(f, n).shape[0] == N for n in PER_GAUSSIAN_PARAMETERS)
    assert f.canonical_means.shape[0] == f.face_idx.shape[0] == f.bary.shape[0] == f.shapedirs.shape[0] == N
    assert (torch.sigmoid(f.opacity_logits) >= 0.05).all()
    # the optimizers hold the new parameters, with state of matching shape
    held = {id(p) for o in opts for g in o.param_groups for p in g["params"]}
    assert all(id(p) not in held for p in old_params)
    assert all(id(getattr(f, n)) in held for n in PER_GAUSSIAN_PARAMETERS)
    for o in opts:
        for p, st in o.state.items():
            assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
    # Gaussians that stay (first rows, old order) keep their state; every small unpruned one stays;
    # new children start with zero momentum; children inherit the parent's face
    n_stay = N - counts["cloned"] - 2 * counts["split"]
    src = (f.canonical_means[:n_stay, None] == old_means[None]).all(-1).float().argmax(-1)  # old row of each stayer
    assert (src.diff() > 0).all() and (src >= 10).all()
    assert set(torch.nonzero((torch.arange(200) >= 10) & ~big_before).flatten().tolist()) <= set(src.tolist())
    for name, avg in old_avg.items():
        state = opts[0].state[getattr(f, name)]["exp_avg"]
        torch.testing.assert_close(state[:n_stay], avg[src], atol=0, rtol=0)
        assert state[n_stay:].abs().sum() == 0
    assert set(f.face_idx.tolist()) <= set(old_face.tolist())
    # a training step after densification works and moves the new parameters
    before = f.color_logits.detach().clone()
    _step(model, dm, opts, step=2)
    assert not torch.equal(before, f.color_logits.detach())
    assert f.offsets.grad is not None and f.offsets.grad.shape == (N, 3)


def test_checkpoint_with_another_number_of_gaussians_loads(capture_dir):
    dm = _datamanager(capture_dir)
    trained = _model(dm, densify_fraction=0.3)
    opts = _adam(trained)
    _step(trained, dm, opts)
    trained.accumulate_gradients(0)
    trained.densify_and_prune(opts, step=1)
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    N = trained.field.num_gaussians
    assert N != 200
    fresh = _model(dm)
    fresh_opts = _adam(fresh)  # nerfstudio builds the optimizers before loading the checkpoint
    fresh.load_state_dict(state)
    assert fresh.field.num_gaussians == N
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, state[k], atol=0, rtol=0, msg=k)
    before = fresh.field.color_logits.detach().clone()
    _step(fresh, dm, fresh_opts)  # the optimizers built before loading still drive the resized parameters
    assert not torch.equal(before, fresh.field.color_logits.detach())


def test_per_frame_pose_refinement_gets_gradients_only_for_training_frames(capture_dir):
    dm = _datamanager(capture_dir)
    model = _model(dm, pose_refine=True)
    assert model.pose_refine.shape == (dm.train_capture.num_frames, 72) and model.pose_refine.abs().sum() == 0
    _, batch = dm.capture_batch(dm.train_capture, torch.tensor([2, 5]), torch.tensor([0, 1]))
    _, eval_batch = dm.capture_batch(dm.eval_capture, torch.tensor([0]), torch.tensor([0]))
    assert batch["train_frame"].tolist() == [2, 5] and eval_batch["train_frame"].tolist() == [-1]
    out = model.render_batch(batch)
    sum(model.get_loss_dict(out, batch).values()).backward()
    g = model.pose_refine.grad
    assert g[[2, 5]].abs().sum(-1).gt(0).all()
    rows = torch.ones(len(g), dtype=torch.bool)
    rows[[2, 5]] = False
    assert g[rows].abs().sum() == 0
    # the correction is added for training frames and never for eval frames
    with torch.no_grad():
        model.pose_refine.fill_(0.1)
    pose, orient = model.refined_pose(batch)
    torch.testing.assert_close(pose, batch["body_pose"] + 0.1)
    torch.testing.assert_close(orient, batch["global_orient"] + 0.1)
    pose, orient = model.refined_pose(eval_batch)
    torch.testing.assert_close(pose, eval_batch["body_pose"], atol=0, rtol=0)
    assert "pose_refine_reg" in model.get_loss_dict(model.render_batch(batch), batch)


def test_novel_view_split_holds_cameras_out_of_training(capture_dir):
    dm = _datamanager(capture_dir, heldout_cameras=(1,))
    T = dm.train_capture.num_frames
    seen = torch.cat([dm.next_train(s)[1]["camera_index"] for s in range(40)])
    assert set(seen.tolist()) == {0, 2}
    cap, frames, cams = dm.split_pairs("novel_view")
    assert cap is dm.train_capture and frames.tolist() == list(range(T)) and cams.tolist() == [1] * T
    cap, frames, cams = dm.split_pairs("novel_pose")
    assert cap is dm.eval_capture and len(frames) == dm.eval_capture.num_frames * 3
    batches = list(dm.split_batches("novel_view", chunk=4))
    assert sum(b["image"].shape[0] for b in batches) == T and all((b["camera_index"] == 1).all() for b in batches)
    with pytest.raises(PoseGenInputError, match="heldout_cameras"):
        _datamanager(capture_dir, heldout_cameras=(3,))
    with pytest.raises(PoseGenInputError, match="heldout_cameras"):
        _datamanager(capture_dir, heldout_cameras=(0, 1, 2))

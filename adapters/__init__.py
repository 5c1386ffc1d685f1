"""Critics: 3D pose estimators behind one protocol (:class:`adapters.protocol.Critic`).

``load_critic(name, checkpoint=PATH, **data_files)`` builds one by name: ``hmr``/``spin``,
``hybrik-res34``, ``hybrik-hrw48``, ``blazepose``, or any critic registered under the
``posegen.critics`` entry-point group. The data files have the same names for every critic
(:data:`adapters.protocol.DATA_FILES`): ``smpl_model_path`` (alias ``body``), ``smpl_mean_params``,
``j_regressor_h36m``, ``h36m_mean_beta``.

This package depends only on the low-level ``posegen_ns.body``, ``posegen_ns.geometry``,
``posegen_ns.metrics`` and ``posegen_ns.errors``; training, loading policy and scoring of critics live
in ``posegen_ns.critic``.
"""

from adapters.registry import available_critics, load_critic

__all__ = ["load_critic", "available_critics"]

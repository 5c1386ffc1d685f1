"""Critics: 3D pose estimators behind one protocol (:class:`adapters.protocol.Critic`).

``load_critic(name, checkpoint=PATH, **data_files)`` builds one by name: ``hmr``/``spin``,
``hybrik-res34``, ``hybrik-hrw48``, ``blazepose``, or any critic registered under the
``posegen.critics`` entry-point group.
"""

from adapters.registry import available_critics, load_critic

__all__ = ["load_critic", "available_critics"]

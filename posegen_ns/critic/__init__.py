"""Training, loading and scoring a critic: everything PoseGen does *to* a critic, on this side of the
``adapters`` / ``posegen_ns`` boundary (``adapters`` holds the critics themselves and imports nothing of this).

- :mod:`posegen_ns.critic.pretrain`: SPIN's supervised losses, pre-training of the default critic on the
  source pose set, the console script ``ns-posegen-pretrain-critic`` and the cached default checkpoint.
- :mod:`posegen_ns.critic.finetune`: fine-tuning on PoseGen's labelled samples mixed with source data.
- :mod:`posegen_ns.critic.evaluation`: the one loop that scores a critic on labelled images
  (:func:`~posegen_ns.critic.evaluation.evaluate_critic`) and its per-image metrics.
- :mod:`posegen_ns.critic.loading`: the one policy that turns a :class:`~posegen_ns.critic.loading.CriticConfig`
  into a critic (:func:`~posegen_ns.critic.loading.load_configured_critic`), used by ``ns-train`` and
  ``ns-posegen-eval``.

Nothing is imported here, so that importing one submodule does not load the others.
"""

"""Training of bidsfm's encoders: data, schedules, objectives, checkpoints, recipes, command.

Nothing at inference imports this package (``tests/test_import_direction.py`` checks it); the
runtime classes it trains live in :mod:`bidsfm.models`.

Modules
-------
``data``
    ROI time series from an npz (ABIDE) or from bidsfm's outputs, ABIDE loading, Pearson FC.
``configs``
    Hyper-parameters of the three objectives (validated dataclasses).
``schedules``
    Learning-rate warm-up + cosine decay, EMA momentum schedules, AdamW parameter groups.
``epoch_log``
    ``pretrain_log.tsv``, one row per epoch.
``objective_brainmass``
    BrainMass: latent representation alignment (BYOL) + Mask-ROI modelling on pseudo-FC views.
``jepa_masks``, ``objective_jepa``
    Brain-JEPA: spatiotemporal masks, predictor, EMA target, training loop.
``objective_tangent``
    Cross-pipeline pretraining of the tangent-space FC encoder (``bidsfmfc`` 2.x).
``cards``, ``checkpoint``
    Card sections and the one checkpoint format of both families: a loadable model folder
    (``weights.safetensors`` + ``card.json``).
``abide``, ``build_fc``, ``build_tangent``, ``build_ts``
    The ABIDE recipes of the bundled models (heads, leave-one-site-out validation, cards).
``commands``, ``cli``
    ``bidsfm-pretrain`` (``--family brainmass`` or ``brainjepa``).
"""

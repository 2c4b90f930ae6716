"""Brain-network foundation models (the only part of bidsfm that imports torch).

Modules
-------
``bidsfm.models.brainmass``
    BrainMass-style FC encoder (Yang et al., IEEE TMI 2024) and a batched Pearson-FC helper.
``bidsfm.models.pretrain``
    Self-supervised pretraining of that encoder (latent representation alignment + Mask-ROI
    modelling), safetensors save/load and the ``bidsfm-pretrain`` command.

Nothing is imported here, so ``import bidsfm.models`` stays free of torch.
"""

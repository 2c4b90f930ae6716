"""Import official BrainMass and Brain-JEPA checkpoints as bidsfm model folders.

Both importers read a checkpoint with ``torch.load(path, map_location="cpu",
weights_only=True)`` only: a file that needs arbitrary code to unpickle is refused before any of
it runs, and the refusal names the blocked globals. Every tensor is checked by name and shape
against an encoder built with the official layout (a non-official one only with
``allow_custom_layout=True``); a mismatch is one error that lists exactly the missing,
unexpected and wrong-shape tensors (compactly: ``blocks.{0-11}.attn.qkv.bias``). The result is
a model folder (``weights.safetensors`` + ``card.json``, see :mod:`bidsfm.models.registry`)
that ``bidsfm ... --model FOLDER`` runs. Imported models have no heads.

Modules, one concern each:

* :mod:`.checkpoint` -- reading a checkpoint without running code, naming blocked globals;
* :mod:`.layout` -- comparing tensors with an expected layout, wording the differences;
* :mod:`.folder` -- the model folder: atlas record, provenance, atomic save;
* :mod:`.brainmass` -- BrainMass (Yang et al., IEEE TMI 2024) mapping;
* :mod:`.brainjepa` -- Brain-JEPA (Dong et al., NeurIPS 2024) mapping and gradient file;
* :mod:`.combine` -- stacking atlases (Tian S3 + Schaefer-400 for Brain-JEPA);
* :mod:`.cli` -- ``bidsfm-import``.

Official layouts were learned from the public code and papers, not copied.
"""

from __future__ import annotations

from .brainjepa import (
    BRAINJEPA_STATE_KEY,
    BRAINJEPA_TARGET_TR,
    brainjepa_config_from_shapes,
    import_brainjepa,
    official_size,
    read_gradients_csv,
)
from .brainmass import BRAINMASS_STATE_KEY, brainmass_config_from_state, import_brainmass
from .checkpoint import (
    blocked_globals,
    load_checkpoint,
    pickle_globals,
    state_dict_from,
    strip_prefix,
)
from .combine import combine_atlases
from .layout import compact_keys, compare_shapes

__all__ = ["load_checkpoint", "pickle_globals", "blocked_globals", "state_dict_from",
           "strip_prefix", "compare_shapes", "compact_keys", "brainmass_config_from_state",
           "import_brainmass", "read_gradients_csv", "official_size",
           "brainjepa_config_from_shapes", "import_brainjepa", "combine_atlases",
           "BRAINMASS_STATE_KEY", "BRAINJEPA_STATE_KEY", "BRAINJEPA_TARGET_TR"]

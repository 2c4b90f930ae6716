"""Comparing a checkpoint's tensors with an expected layout, and wording the differences.

Every difference is reported in one line, grouped by layer: ``missing 12:
attention_list.15.*`` (a whole layer), ``missing 2: attention_list.{1-2}.norm2.bias``,
``wrong shape 1: blocks.0.mlp.fc1.weight (1537, 384), expected (1536, 384)``. Layout sizes that
several tensors carry are inferred by :func:`most_common`, so one damaged tensor is reported
as itself and not as every tensor whose expected shape it would have changed.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from ...errors import ConfigError

__all__ = ["compact_keys", "compare_shapes", "tensor_shapes", "check_layout", "check_finite",
           "most_common", "layer_count"]

_INDEXED = re.compile(r"^(.*?)\.(\d+)(\..*)?$")


def _ranges(numbers: Iterable[int]) -> str:
    nums = sorted(set(numbers))
    parts, start, prev = [], nums[0], nums[0]
    for n in nums[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(parts)


def compact_keys(keys: Iterable[str]) -> list[str]:
    """Group keys that differ only by their first numeric part: ``blocks.{0-11}.norm1.weight``.

    Parameters
    ----------
    keys : iterable of str
        State-dict keys.

    Returns
    -------
    list of str
        Sorted, one entry per pattern (a key without a numeric part stays as it is).
    """
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    plain = []
    for key in keys:
        m = _INDEXED.match(key)
        if m:
            groups[(m.group(1), m.group(3) or "")].append(int(m.group(2)))
        else:
            plain.append(key)
    out = list(plain)
    for (head, tail), nums in groups.items():
        out.append(f"{head}.{nums[0]}{tail}" if len(set(nums)) == 1
                   else f"{head}.{{{_ranges(nums)}}}{tail}")
    return sorted(out)


def _whole_layers(keys: Iterable[str], universe: Iterable[str]) -> list[str]:
    """``keys``, with every layer (``head.N.``) all of whose ``universe`` keys are among them
    replaced by ``head.N.*``."""
    keys = list(keys)
    members: dict[str, set[str]] = defaultdict(set)
    for key in universe:
        m = _INDEXED.match(key)
        if m and m.group(3):
            members[f"{m.group(1)}.{m.group(2)}"].add(key)
    chosen, covered = set(keys), set()
    out = []
    for layer, layer_keys in members.items():
        if len(layer_keys) > 1 and layer_keys <= chosen:
            out.append(f"{layer}.*")
            covered |= layer_keys
    return out + [k for k in keys if k not in covered]


def compare_shapes(actual: Mapping[str, tuple[int, ...]],
                   expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Every difference between two key -> shape maps, compactly worded.

    Returns
    -------
    list of str
        e.g. ``["missing 12: attention_list.15.*", "unexpected 1: head.weight",
        "wrong shape 12: blocks.{0-11}.attn.qkv.weight (1152, 384), expected (2304, 768)"]``
        (found shape first, then the expected one); empty when they agree. A layer whose
        tensors are all missing (or all unexpected) is written ``layer.N.*``.
    """
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: "
                        f"{', '.join(compact_keys(_whole_layers(missing, expected)))}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: "
                        f"{', '.join(compact_keys(_whole_layers(unexpected, actual)))}")
    wrong: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = defaultdict(list)
    for k, shape in expected.items():
        if k in actual and tuple(actual[k]) != tuple(shape):
            wrong[(tuple(actual[k]), tuple(shape))].append(k)
    if wrong:
        n = sum(len(v) for v in wrong.values())
        items = [f"{', '.join(compact_keys(ks))} {got}, expected {exp}"
                 for (got, exp), ks in wrong.items()]
        problems.append(f"wrong shape {n}: {'; '.join(items)}")
    return problems


def tensor_shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape (tuple of int) of a state dict."""
    return {k: tuple(int(s) for s in v.shape) for k, v in state.items()}


def check_layout(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str,
                 path: Any, remedy: str = "Check that this is the official checkpoint, "
                 "unmodified") -> None:
    """Raise one error listing every difference between ``state`` and ``expected``.

    Parameters
    ----------
    state : mapping
        Key -> tensor.
    expected : mapping
        Key -> shape of the layout ``state`` must have.
    what : str
        Start of the message, e.g. ``"target_encoder (Brain-JEPA) is not the official ViT-B
        layout"``.
    path : str or Path
        The checkpoint (named first in the message).
    remedy : str
        What to do.

    Raises
    ------
    ConfigError
        If any tensor is missing, unexpected or of another shape.
    """
    problems = compare_shapes(tensor_shapes(state), expected)
    if problems:
        raise ConfigError(f"{what}: {'; '.join(problems)}", path=path, remedy=remedy)


def check_finite(state: Mapping[str, Any], path: Any) -> None:
    """Raise if any floating-point tensor of ``state`` holds NaN or inf."""
    import torch

    bad = [k for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"non-finite values (NaN/inf) in {', '.join(compact_keys(bad))}",
                          path=path, remedy="The checkpoint is corrupt; download it again")


def most_common(values: Iterable[Hashable]) -> Any:
    """The most frequent value (the first seen among equally frequent ones); None if empty."""
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def layer_count(keys: Iterable[str], prefix: str) -> int:
    """1 + the largest ``N`` of keys ``{prefix}.N.*`` (0 when there are none)."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in keys if (m := pattern.match(k))), default=-1)

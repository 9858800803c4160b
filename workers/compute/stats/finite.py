"""The harvest's stop on NaN or infinite activations."""

from __future__ import annotations

import torch


class NonFiniteActivation(ValueError):
    """A NaN or an infinity among a batch's valid activations: the statistics would be garbage
    (each path would make different garbage of it), so the harvest stops. A ``ValueError``: the
    run fails at once and is not retried."""

    def __init__(self, *, context: int, unit: int, value: float, hook: str = "", source: str = "") -> None:
        self.context, self.unit, self.value, self.hook, self.source = context, unit, value, hook, source
        where = f" at hook {hook} (source {source})" if hook else ""
        super().__init__(
            f"non-finite activation ({value}){where} in context {context}, unit {unit}: the model or SAE "
            "produced NaN or Inf there (in float16 or bfloat16 often an overflow: harvest in float32)")

    def at(self, *, hook: str, source: str) -> NonFiniteActivation:
        """The same error, naming where it was seen."""
        return NonFiniteActivation(context=self.context, unit=self.unit, value=self.value, hook=hook, source=source)


def check_finite(context_sums: torch.Tensor, acts: torch.Tensor, contexts: torch.Tensor) -> None:
    """Raise :class:`NonFiniteActivation` for the first context (then unit) whose sum over its
    valid tokens is not finite: a NaN or an infinity anywhere in it makes it so.

    ``context_sums`` [B, U]; ``acts`` [B, T, U] with the left-out positions zeroed (to name the
    bad value); ``contexts`` [B].
    """
    bad = ~torch.isfinite(context_sums)
    if not bool(bad.any()):
        return
    b, u = (int(i) for i in bad.nonzero()[0])
    row = acts[b, :, u].float()
    odd = row[~torch.isfinite(row)]
    value = float(odd[0]) if odd.numel() else float(context_sums[b, u])  # else: a sum that overflowed
    raise NonFiniteActivation(context=int(contexts[b]), unit=u, value=value)

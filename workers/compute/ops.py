"""Names of the intervention operations: torch-free, so the web side checks requests against the
same list the compute core applies (``workers.compute.interventions``)."""

from __future__ import annotations

OPS = ("zero", "mean", "clamp", "scale", "steer")
"""zero: a' = 0; mean: a' = the unit's mean from its harvest; clamp: a' = value; scale: a' = value * a;
steer: add value * the unit's direction (a is not read)."""

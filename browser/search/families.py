"""Reads of feature families for the feature page (parents, children, next/previous layer) and the
source page (the tree of this source's features with their children in wider SAEs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Q

from browser.catalog.models import Source, Unit
from browser.search.models import FamilyLink

TREE_PARENTS = 50


@dataclass
class UnitFamily:
    parents: list[FamilyLink] = field(default_factory=list)
    children: list[FamilyLink] = field(default_factory=list)
    previous_layer: list[FamilyLink] = field(default_factory=list)
    next_layer: list[FamilyLink] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.parents or self.children or self.previous_layer or self.next_layer)


def _links() -> object:
    return FamilyLink.objects.select_related("parent__source__model", "child__source__model").defer(
        "parent__search", "child__search", "parent__logit_effects", "child__logit_effects")


def unit_family(unit: Unit) -> UnitFamily:
    """One query for all four lists; none for a neuron (families link SAE features only)."""
    family = UnitFamily()
    if unit.source.kind != Source.Kind.SAE:
        return family
    links = _links().filter(Q(child=unit) | Q(parent=unit)).order_by(  # type: ignore[attr-defined]
        "kind", "parent__source__n_units", "child__source__n_units", "-cosine", "pk")
    for link in links:
        if link.kind == FamilyLink.Kind.WIDTH:
            (family.parents if link.child_id == unit.pk else family.children).append(link)
        elif link.child_id == unit.pk:
            family.previous_layer.append(link)
        else:
            family.next_layer.append(link)
    family.next_layer = sorted(family.next_layer, key=lambda link: -link.cosine)[:5]
    return family


@dataclass
class TreeNode:
    unit: Unit
    children: list[FamilyLink]


def source_tree(source: Source, *, limit: int = TREE_PARENTS) -> tuple[list[TreeNode], int]:
    """This source's features that have children in wider SAEs (lowest index first, at most ``limit``),
    each with its children; and how many such features there are in all. No query for a neuron
    source (families link SAE features only)."""
    if source.kind != Source.Kind.SAE:
        return [], 0
    parent_ids = (FamilyLink.objects.filter(parent__source=source, kind=FamilyLink.Kind.WIDTH)
                  .values_list("parent_id", flat=True).distinct())
    total = parent_ids.count()
    chosen = list(Unit.objects.filter(pk__in=parent_ids).select_related("source__model")
                  .defer("search", "logit_effects").order_by("index")[:limit])
    by_parent: dict[int, list[FamilyLink]] = {}
    for link in _links().filter(parent__in=chosen, kind=FamilyLink.Kind.WIDTH).order_by(  # type: ignore[attr-defined]
            "child__source__n_units", "-cosine"):
        by_parent.setdefault(link.parent_id, []).append(link)
    return [TreeNode(u, by_parent.get(u.pk, [])) for u in chosen], total

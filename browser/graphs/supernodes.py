"""Writes of supernodes: save (create, or update at the revision the writer read) and delete, each
recorded as a revision."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from browser.accounts import access
from browser.catalog.uids import storable
from browser.graphs.models import Graph, Supernode, SupernodeRevision


class SupernodeConflict(ValidationError):
    """The supernode changed since the writer read it (another revision was saved)."""


def _clean(graph: Graph, name: Any, nodes: Any) -> tuple[str, list[int]]:
    if graph.status != Graph.Status.DONE:
        raise ValidationError(f"graph #{graph.pk} is {graph.status}: group nodes once it is done")
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or not storable(name):
        raise ValidationError("a supernode needs a name of 1 to 200 characters")
    if not isinstance(nodes, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in nodes):
        raise ValidationError("nodes must be a list of node numbers")
    unique = sorted(set(nodes))
    if len(unique) < 2:
        raise ValidationError("a supernode groups at least two nodes")
    if unique[0] < 0 or unique[-1] >= len(graph.nodes):
        raise ValidationError(f"node numbers run from 0 to {len(graph.nodes) - 1} in graph #{graph.pk}")
    return name.strip(), unique


def supernode_save(*, graph: Graph, user: Any, name: Any, nodes: Any, revision: int | None = None) -> Supernode:
    """Create the supernode ``name`` of the graph, or replace its nodes (``revision``: the one the
    writer read; a newer one raises SupernodeConflict)."""
    if not access.can_label(user):
        raise PermissionDenied("grouping nodes needs the annotator role")
    name, members = _clean(graph, name, nodes)
    with transaction.atomic():
        node = Supernode.objects.select_for_update().filter(graph=graph, name=name).first()
        if node is None:
            node = Supernode.objects.create(graph=graph, name=name, nodes=members, author=user)
        else:
            if revision is not None and revision != node.revision:
                raise SupernodeConflict(f"supernode {name!r} is at revision {node.revision}, not {revision}")
            node.nodes, node.revision = members, node.revision + 1
            node.save(update_fields=["nodes", "revision", "updated"])
        SupernodeRevision.objects.create(graph=graph, supernode=node, name=name, nodes=members,
                                         revision=node.revision, editor=user)
    return node


def supernode_delete(*, supernode: Supernode, user: Any) -> None:
    if not access.can_label(user):
        raise PermissionDenied("grouping nodes needs the annotator role")
    with transaction.atomic():
        SupernodeRevision.objects.create(graph=supernode.graph, supernode=None, name=supernode.name,
                                         nodes=supernode.nodes, revision=supernode.revision + 1, deleted=True,
                                         editor=user)
        supernode.delete()

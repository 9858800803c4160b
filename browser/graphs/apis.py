"""/api/v1/graphs/: request a graph (signed-in users, throttled, like every compute request) and
read one (the graph page's JSON twin)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiTypes, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.api.compute import CanCompute, ComputeError, ComputeThrottle, compute_send
from browser.api.errors import Conflict
from browser.api.permissions import CanRead, ReadOrLabel
from browser.graphs.checks import MAX_CHECK_NODES, check_edit, check_nodes, check_run, check_target
from browser.graphs.checks import TASK as CHECK_TASK
from browser.graphs.neuronpedia import graph_neuronpedia
from browser.graphs.selectors import graph_detail, graph_get, graph_list, supernode_history, supernode_list
from browser.graphs.services import SupernodeConflict, graph_import_upload, graph_request, supernode_save
from workers.compute.graph_config import BASES, MAX_PROMPT_CHARS, MAX_UNITS

TASK = "workers.tasks_graphs.compute_graph"


class NoWorker(exceptions.APIException):
    status_code = 503
    default_detail = ("No worker is running, so nothing can compute this now. "
                      "Start one with `celery -A workers worker -Q gpu,default --pool solo`.")
    default_code = "no_worker"


class GraphRequestSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    prompt = serializers.CharField(max_length=MAX_PROMPT_CHARS, trim_whitespace=False)
    basis = serializers.ChoiceField(choices=["neurons", "sae", "transcoder"], default="neurons")
    target = serializers.CharField(max_length=200, required=False, allow_blank=True, trim_whitespace=False)
    max_units = serializers.IntegerField(min_value=1, max_value=MAX_UNITS, required=False)


class GraphListCreate(APIView):
    def get_permissions(self) -> list[Any]:
        return [CanCompute()] if self.request.method == "POST" else [CanRead()]

    def get_throttles(self) -> list[Any]:
        return [ComputeThrottle()] if self.request.method == "POST" else super().get_throttles()

    @extend_schema(operation_id="graphs_list", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        graphs = graph_list(model=request.query_params.get("model") or None)
        return Response({"results": [{"id": g.pk, "model": g.model.name, "prompt": g.prompt, "basis": g.basis,
                                      "status": g.status, "url": f"/graphs/{g.pk}/"} for g in graphs]})

    @extend_schema(request=GraphRequestSerializer, responses={200: OpenApiTypes.OBJECT, 202: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        """Queue a graph (202) or return the one already made with the same settings (200)."""
        params = GraphRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        from workers.celery import ROUTES
        from workers.presence import workers_alive

        if not workers_alive(ROUTES[TASK]):
            raise NoWorker()
        # Bad input raises Django's ValidationError: a 400 in the API's error format, nothing stored.
        graph, created = graph_request(model_name=data["model"], prompt=data["prompt"], basis=data["basis"],
                                       target=data.get("target") or None, max_units=data.get("max_units"),
                                       created_by=request.user)
        if created:
            compute_send(TASK, [graph.job_id])
        body = {"id": graph.pk, "status": graph.status, "url": f"/graphs/{graph.pk}/",
                "api": f"/api/v1/graphs/{graph.pk}/", "bases": list(BASES)}
        return Response(body, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)


class GraphDetail(APIView):

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, pk: int) -> Response:
        return Response(graph_detail(graph_get(pk=pk)))


class SupernodeSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    nodes = serializers.ListField(child=serializers.IntegerField(), max_length=10_000)
    revision = serializers.IntegerField(required=False)


class GraphSupernodes(APIView):
    """GET: the graph's supernodes and their history; POST ``{name, nodes, revision?}``: save one
    (annotators; 409 when ``revision`` is not the current one)."""

    permission_classes = [ReadOrLabel]

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, pk: int) -> Response:
        graph = graph_get(pk=pk)
        return Response({"results": supernode_list(graph), "history": supernode_history(graph)})

    @extend_schema(request=SupernodeSerializer, responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT})
    def post(self, request: Request, pk: int) -> Response:
        graph = graph_get(pk=pk)
        params = SupernodeSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            node = supernode_save(graph=graph, user=request.user, name=params.validated_data["name"],
                                  nodes=params.validated_data["nodes"],
                                  revision=params.validated_data.get("revision"))
        except SupernodeConflict as exc:
            raise Conflict(exc.messages[0]) from None
        return Response({"id": node.pk, "name": node.name, "nodes": node.nodes, "revision": node.revision},
                        status=status.HTTP_201_CREATED if node.revision == 1 else status.HTTP_200_OK)


class GraphNeuronpedia(APIView):
    """The graph as Neuronpedia's attribution-graph JSON (``browser.graphs.neuronpedia``)."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, pk: int) -> Response:
        graph = graph_get(pk=pk)
        if graph.status != graph.Status.DONE:
            raise exceptions.ValidationError({"detail": f"graph #{pk} is {graph.status}"})
        response = Response(graph_neuronpedia(graph))
        response["Content-Disposition"] = f'attachment; filename="{graph.model.name}-graph-{pk}.json"'
        return response


class NoAnswer(exceptions.APIException):
    status_code = 422
    default_code = "no_answer"


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^\d+_\d+_\d+$"}]})
class NodeRefField(serializers.Field):
    """A node: its position in the graph's ``nodes`` (an integer) or a unit's Neuronpedia id (a string
    layer_index_position)."""

    def to_internal_value(self, data: Any) -> int | str:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
        if isinstance(data, str) and 0 < len(data) <= 50:
            return int(data) if data.isdigit() else data
        raise serializers.ValidationError("a node is a node number or a unit's id layer_index_position")

    def to_representation(self, value: Any) -> Any:
        return value


class CheckSerializer(serializers.Serializer):
    nodes = serializers.ListField(child=NodeRefField(), required=False, max_length=MAX_CHECK_NODES)
    supernode = serializers.CharField(max_length=200, required=False)
    op = serializers.CharField(max_length=20, default="zero")
    value = serializers.FloatField(required=False, allow_null=True)
    target = serializers.CharField(max_length=200, required=False, allow_blank=True, trim_whitespace=False)


class GraphCheck(APIView):
    """Edit unit nodes (``nodes``) or a supernode's (``supernode``) together, ablated (``op`` zero,
    the default) or steered (``scale``, ``clamp``, ``steer`` with ``value``): a target logit's change
    (``target``: one of the graph's, default the top one) as the graph's replacement model predicts it
    and as the model really shows it. 503 ``no_worker`` when no worker runs."""

    permission_classes = [CanCompute]
    throttle_classes = [ComputeThrottle]

    @extend_schema(request=CheckSerializer, responses={200: OpenApiTypes.OBJECT})
    def post(self, request: Request, pk: int) -> Response:
        graph = graph_get(pk=pk)
        params = CheckSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        nodes = check_nodes(graph=graph, nodes=data.get("nodes"), supernode=data.get("supernode"))
        op = data["op"]
        value = check_edit(op=op, value=data.get("value"))
        target = check_target(graph=graph, target=data.get("target"))
        from workers.celery import ROUTES
        from workers.presence import workers_alive

        if not workers_alive(ROUTES[CHECK_TASK]):
            raise NoWorker()
        try:
            return Response(check_run(graph=graph, nodes=nodes, op=op, value=value, target=target))
        except ComputeError as exc:
            raise NoAnswer(str(exc)) from None


class GraphImport(APIView):
    """Upload a Neuronpedia/circuit-tracer attribution-graph JSON file (multipart ``file``, at most
    ``MAX_IMPORT_BYTES``; ``model``: a registered model, default the file's): 201 with the new graph,
    200 when the same file was imported before, 400 naming what is wrong with a malformed file."""

    permission_classes = [CanCompute]
    throttle_classes = [ComputeThrottle]
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"},
            "model": {"type": "string", "description": "a registered model (default: the one the file names)"}},
            "required": ["file"]}},
        responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        upload = request.FILES.get("file")
        if upload is None:
            raise exceptions.ValidationError({"file": "send the graph JSON file as 'file'"})
        graph, created, notes = graph_import_upload(upload, model_name=request.data.get("model") or None,
                                                    user=request.user)
        return Response({"id": graph.pk, "url": f"/graphs/{graph.pk}/", "api": f"/api/v1/graphs/{graph.pk}/",
                         "basis": graph.basis, "nodes": len(graph.nodes), "edges": len(graph.edges), "notes": notes},
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

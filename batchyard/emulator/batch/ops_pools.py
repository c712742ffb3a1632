"""Pool and compute-node operations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchyard.emulator.batch.common import (
    BatchApiError,
    check_id,
    forget_passwords,
    invalid,
    not_found,
    parse_duration,
    require,
    rfc1123,
    unsupported,
)
from batchyard.emulator.batch.files import delete_file, file_response, list_files
from batchyard.emulator.batch.odata import page, select
from batchyard.emulator.batch.ops_autoscale import check_pool_autoscale
from batchyard.emulator.batch.protocol import (
    Request,
    Response,
    Router,
    check_conditions,
    created,
    entity,
    resource_headers,
)
from batchyard.emulator.batch.state import Node, Pool
from batchyard.emulator.batch.translate import check_registry, split_command_line, validate_task
from batchyard.emulator.batch.validation import image_id_problem, invalid_value

if TYPE_CHECKING:
    from batchyard.emulator.batch.service import BatchService

REFUSED_POOL_FIELDS = {
    "mountConfiguration": "mounting file systems (mountConfiguration)",
    "applicationPackageReferences": "application packages",
    "certificateReferences": "certificates",
}
MIN_RESIZE_TIMEOUT_S = 5 * 60  # "The minimum value is 5 minutes" (resizeTimeout, Batch REST 2025-06-01)
UPDATABLE = ("startTask", "metadata", "targetNodeCommunicationMode", "applicationPackageReferences",
             "certificateReferences", "taskSlotsPerNode", "vmSize", "displayName")


def _check_start_task(start: Any) -> None:
    if start is None:
        return
    if not isinstance(start, dict):
        raise invalid("startTask must be an object", "startTask")
    split_command_line(require(start, "commandLine"), "startTask.commandLine")
    if start.get("containerSettings"):
        raise unsupported("container start tasks", "startTask.containerSettings")
    validate_task({**start, "id": "starttask", "constraints": {}}, uses_dependencies=False)


def _check_resize_timeout(body: dict[str, Any]) -> None:
    """Azure answers 400 for a resize timeout under 5 minutes (pool create and resize alike)."""
    seconds = parse_duration(body.get("resizeTimeout"), "resizeTimeout")
    if seconds is not None and seconds < MIN_RESIZE_TIMEOUT_S:
        raise invalid("The value provided for resizeTimeout is invalid: the minimum value is 5 minutes.",
                      "resizeTimeout")


def _check_container_configuration(config: Any, prop: str) -> None:
    if not isinstance(config, dict):
        raise invalid(f"{prop} must be an object", prop)
    images = config.get("containerImageNames") or []
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise invalid(f"{prop}.containerImageNames must be a list of image names", f"{prop}.containerImageNames")
    registries = config.get("containerRegistries") or []
    if not isinstance(registries, list):
        raise invalid(f"{prop}.containerRegistries must be a list", f"{prop}.containerRegistries")
    for i, reg in enumerate(registries):
        check_registry(reg, f"{prop}.containerRegistries[{i}]")


def _check_pool(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("The pool must be a JSON object.", "pool")
    check_id(require(body, "id"))
    require(body, "vmSize")
    vm = require(body, "virtualMachineConfiguration", dict)
    require(vm, "nodeAgentSKUId")
    image = require(vm, "imageReference", dict)
    # Checked here too, not only by the strict schema: Azure refuses a malformed id whatever the client.
    image_id = image.get("virtualMachineImageId")
    problem = image_id_problem(image_id) if isinstance(image_id, str) else None
    if problem:
        raise invalid_value("virtualMachineImageId", "virtualMachineConfiguration.imageReference.virtualMachineImageId",
                            image_id, problem)
    # containerConfiguration is accepted: container tasks run on the local Docker engine, whose images
    # are never pulled (containerImageNames are not prefetched, containerRegistries are never signed
    # in to; a missing image fails the task). Registry passwords are dropped in add_pool.
    if vm.get("containerConfiguration") is not None:
        _check_container_configuration(vm["containerConfiguration"],
                                       "virtualMachineConfiguration.containerConfiguration")
    for name, what in REFUSED_POOL_FIELDS.items():
        if body.get(name):
            raise unsupported(what, name)
    check_pool_autoscale(body)
    for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        value = body.get(key, 0) or 0
        if not isinstance(value, int) or value < 0 or value > 64:
            raise invalid(f"{key} must be an integer from 0 to 64 on the emulator", key)
    slots = body.get("taskSlotsPerNode", 1) or 1
    if not isinstance(slots, int) or slots < 1 or slots > 256:
        raise invalid("taskSlotsPerNode must be an integer from 1 to 256", "taskSlotsPerNode")
    _check_resize_timeout(body)
    _check_start_task(body.get("startTask"))
    return body


class PoolOps:
    def __init__(self, emu: BatchService) -> None:
        self.emu = emu

    def register(self, r: Router) -> None:
        r.add("POST", "pools", self.create)
        r.add("GET", "pools", self.list)
        r.add("GET", "pools/{}", self.get)
        r.add("HEAD", "pools/{}", self.exists)
        r.add("DELETE", "pools/{}", self.delete)
        r.add("PATCH", "pools/{}", self.patch)
        r.add("POST", "pools/{}/updateproperties", self.replace_properties)
        r.add("POST", "pools/{}/resize", self.resize)
        r.add("POST", "pools/{}/stopresize", self.stop_resize)
        r.add("POST", "pools/{}/removenodes", self.remove_nodes)
        r.add("GET", "pools/{}/nodes", self.list_nodes)
        r.add("GET", "pools/{}/nodes/{}", self.get_node)
        r.add("GET", "pools/{}/nodes/{}/files", self.list_node_files)
        r.add("GET", "pools/{}/nodes/{}/files/{*}", self.get_node_file)
        r.add("HEAD", "pools/{}/nodes/{}/files/{*}", self.get_node_file)
        r.add("DELETE", "pools/{}/nodes/{}/files/{*}", self.delete_node_file)

    # --- helpers ----------------------------------------------------------------------------------
    def pool(self, pool_id: str) -> Pool:
        pool = self.emu.store.pools.get(pool_id.lower())
        if pool is None:
            raise not_found("Pool", pool_id)
        return pool

    def node(self, pool: Pool, node_id: str) -> Node:
        node = pool.nodes.get(node_id.lower())
        if node is None or node.removed:
            raise not_found("Node", node_id)
        return node

    def url(self, pool: Pool) -> str:
        return f"{self.emu.url}/pools/{pool.id}"

    def done(self, pool: Pool, status: int = 200) -> Response:
        return Response(status, None, resource_headers(self.url(pool), pool.etag, pool.last_modified))

    def add_pool(self, body: dict[str, Any], auto_for_job: str | None = None) -> Pool:
        """Create a pool and its nodes (also used for auto pools); caller holds the lock."""
        store = self.emu.store
        existing = store.pools.get(body["id"].lower())
        if existing is not None and existing.state == "deleting":
            raise BatchApiError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion and is "
                                "being reclaimed.", [("Id", body["id"])])
        if existing is not None:
            raise BatchApiError(409, "PoolExists", "The specified pool already exists.", [("Id", body["id"])])
        pool = Pool(id=body["id"], spec=forget_passwords(body), state="active", auto_for_job=auto_for_job)
        store.pools[pool.id.lower()] = pool
        self.emu.engine.resize(pool)
        return pool

    # --- pools ------------------------------------------------------------------------------------
    def create(self, req: Request) -> Response:
        body = _check_pool(req.json())
        with self.emu.store.lock:
            pool = self.add_pool(body)
            return created(self.url(pool), pool.etag, pool.last_modified)

    def list(self, req: Request) -> Response:
        with self.emu.store.lock:
            # Azure lists pools by id, whatever the order they were created in.
            pools = sorted(self.emu.store.pools.values(), key=lambda p: p.id.lower())
            views = [p.view(self.emu.url) for p in pools]
        items, next_link = page(views, req.query, self.emu.url, "/pools")
        return self.emu.listing("pools", items, next_link)

    def get(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            check_conditions(req, pool.etag, pool.last_modified)
            view = pool.view(self.emu.url)
        return entity(self.emu.url, "pools", select(view, req.query.get("$select")), pool.etag, pool.last_modified)

    def exists(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            return Response(200, None, {"ETag": pool.etag, "Last-Modified": rfc1123(pool.last_modified)},
                            content_length=0)

    def delete(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            check_conditions(req, pool.etag, pool.last_modified)
            self.emu.engine.delete_pool(pool)
            return Response(202, None, {"DataServiceId": self.url(pool)})

    def patch(self, req: Request) -> Response:
        body = req.json()
        _check_start_task(body.get("startTask"))
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            check_conditions(req, pool.etag, pool.last_modified)
            for key in UPDATABLE:
                if key in body:
                    if key in REFUSED_POOL_FIELDS and body[key]:
                        raise unsupported(REFUSED_POOL_FIELDS[key], key)
                    pool.spec[key] = body[key]
            pool.touch()
            return self.done(pool)

    def replace_properties(self, req: Request) -> Response:
        body = req.json()
        _check_start_task(body.get("startTask"))
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            for key in ("startTask", "metadata", "targetNodeCommunicationMode"):
                pool.spec.pop(key, None)
                if body.get(key) is not None:
                    pool.spec[key] = body[key]
            pool.touch()
            return self.done(pool, 204)

    def resize(self, req: Request) -> Response:
        body = req.json()
        _check_resize_timeout(body)
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            if pool.state != "active":
                raise BatchApiError(409, "PoolBeingDeleted", "The specified pool is being deleted.")
            if pool.spec.get("enableAutoScale"):
                raise BatchApiError(409, "OperationInvalidForCurrentState", "The pool scales automatically: "
                                    "disable autoscale before resizing it.")
            for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
                if key in body:
                    value = body[key]
                    if not isinstance(value, int) or value < 0 or value > 64:
                        raise invalid(f"{key} must be an integer from 0 to 64 on the emulator", key)
                    pool.spec[key] = value
            self.emu.engine.resize(pool)
            return self.done(pool, 202)

    def stop_resize(self, req: Request) -> Response:
        # Nodes join at once, so only the allocation state stops: ``stopping``, then ``steady`` with
        # a ResizeStopped error per node kind the resize was changing (docs/emulator.md).
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            self.emu.engine.stop_resize(pool)
            return self.done(pool, 202)

    def remove_nodes(self, req: Request) -> Response:
        body = req.json()
        ids = require(body, "nodeList", list)
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            nodes = [self.node(pool, str(i)) for i in ids]
            changing: set[str] = set()
            for node in nodes:
                key = "targetDedicatedNodes" if node.is_dedicated else "targetLowPriorityNodes"
                pool.spec[key] = max(0, int(pool.spec.get(key) or 0) - 1)
                changing.add(key)
                self.emu.engine.remove_node(pool, node, reason="requeue")
            self.emu.engine.begin_allocation(pool, tuple(sorted(changing)))
            pool.touch()
            return self.done(pool, 202)

    # --- nodes ------------------------------------------------------------------------------------
    def list_nodes(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            views = [n.view(self.emu.url, pool) for n in pool.nodes.values() if not n.removed]
        items, next_link = page(views, req.query, self.emu.url, f"/pools/{pool.id}/nodes")
        return self.emu.listing("nodes", items, next_link)

    def get_node(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            node = self.node(pool, req.params[1])
            body = {"odata.metadata": f"{self.emu.url}/$metadata#nodes/@Element", **node.view(self.emu.url, pool)}
        return Response(200, body)

    def list_node_files(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            node = self.node(pool, req.params[1])
        url = f"{self.emu.url}/pools/{pool.id}/nodes/{node.id}/files"
        items, next_link = page(list_files(node.root, url, req.flag("recursive")), req.query, self.emu.url,
                                f"/pools/{pool.id}/nodes/{node.id}/files")
        return self.emu.listing("files", items, next_link)

    def get_node_file(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            node = self.node(pool, req.params[1])
        return file_response(req, node.root, req.rest, f"{self.emu.url}/pools/{pool.id}/nodes/{node.id}/files")

    def delete_node_file(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self.pool(req.params[0])
            node = self.node(pool, req.params[1])
        delete_file(node.root, req.rest, req.flag("recursive"))
        return Response(200)

"""What the placement engine's components share: nodes, tasks, the queues of waiting serial
tasks and the free-capacity index of nodes by (free cores, free GPUs, usable until). Pure."""

from __future__ import annotations

from bisect import bisect_left, insort

from balsam_dask.packing.records import GONE, INF, Key, Node, PlacementError, QueueKey, ShapeQueue, Task, TaskId


class PlacerCore:
    """Shared state of the engine; each component (gangs, holds, prefetch) owns the rest."""

    def __init__(self, backfill: bool) -> None:
        self.backfill = backfill  # reserved idle nodes may take tasks that end before the promise
        self.nodes: dict[str, Node] = {}
        self.by_idx: dict[int, Node] = {}
        self.alloc_nodes: dict[str, int] = {}  # non-draining nodes per allocation
        self.tasks: dict[TaskId, Task] = {}
        self.seq = 0
        self.version = 0  # bumped whenever gang reservations may have to change
        # waiting serial tasks: one queue per shape; shapes by their next task's (-priority, seq)
        # in a heap whose entries not matching head_of are stale
        self.queues: dict[QueueKey, ShapeQueue] = {}
        self.n_serial = 0
        self.heads: list[tuple[int, int, QueueKey]] = []
        self.head_of: dict[QueueKey, tuple[int, int]] = {}
        # shapes that fit nowhere at the last pass wait here until some node's free capacity
        # grows to fit them (time only ever makes nodes less eligible)
        self.blocked: list[tuple[int, int, QueueKey]] = []
        self.grown = (0, 0)  # the most free (cores, GPUs) any node gained since the last pass
        # the free-capacity index: nodes that may take a serial task now, by key
        self.buckets: dict[Key, set[int]] = {}
        self.keys: list[Key] = []  # sorted keys of non-empty buckets

    def node(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None:
            raise PlacementError(f"unknown node {name!r}; add_node(NodeInfo({name!r}, ...)) first")
        return node

    def drop(self, task: Task) -> None:
        """The task leaves the engine."""
        task.state = GONE
        task.nodes = []
        del self.tasks[task.id]

    def alloc_dec(self, alloc: str) -> None:
        left = self.alloc_nodes.get(alloc, 0) - 1
        if left > 0:
            self.alloc_nodes[alloc] = left
        else:
            self.alloc_nodes.pop(alloc, None)

    # ------------------------------------------------------------------ index
    def want(self, node: Node) -> Key | None:
        """The index key a node should have: None if it must take no serial task now."""
        if node.draining or node.gang is not None or node.held is not None or node.free_cores <= 0:
            return None
        end = node.end
        if node.reserved_by is not None:
            if not self.backfill or node.reserved_by.promise == INF:
                return None
            end = min(end, node.reserved_by.promise)
        return (node.free_cores, len(node.free_gpus), end)

    def rekey(self, node: Node) -> None:
        key = self.want(node)
        if key != node.key:
            self.set_key(node, key)

    def set_key(self, node: Node, key: Key | None) -> None:
        old = node.key
        if old is not None:
            bucket = self.buckets[old]
            bucket.discard(node.idx)
            if not bucket:
                del self.buckets[old], self.keys[bisect_left(self.keys, old)]
        if key is not None:
            bucket = self.buckets.get(key)  # type: ignore[assignment]
            if bucket is None:
                bucket = self.buckets[key] = set()
                insort(self.keys, key)
            bucket.add(node.idx)
            self.grown = (max(key[0], self.grown[0]), max(key[1], self.grown[1]))
        node.key = key

"""A reference interpreter of /work/shared/SPEC.md: sequential, no queues, no stores, no concurrency.

It is the oracle of the differential tests (tests/differential): a plain walk of the graph meant to be
checked against SPEC line by line, written without the engine. It imports only the blueprint models
(``flowcraft_core.models``, to parse blueprints) and the safe evaluator
(``flowcraft_core.expressions.SafeEvaluator``) for edge conditions, transforms and loop conditions:
re-implementing the expression language is out of scope, and it has its own tests.

The walk. Every finished node sends a token along each outgoing edge: *taken* (with a value) or *not
taken*. A node waits for a token on each of its forward incoming edges ("forward": back edges excluded).

- SPEC "Nodes" / routing: an edge with ``action`` is taken only when it equals the result's action; an
  edge without ``action`` is taken on any result, and is the default route when no action matched;
  ``condition`` must also be truthy; ``transform`` becomes the target's input.
- ``joinStrategy: "all"``: the node runs once every forward edge sent its token and at least one was
  taken; ``"any"``: it runs on the first taken token and never again. A node all of whose tokens are
  *not taken* is skipped, and sends *not taken* on every outgoing edge ("branches not taken end quietly").
- Input (SPEC "ctx.input"): ``inputs`` as a string or mapping reads context keys (a node id means its
  output); otherwise a transform's value, else the one delivering predecessor's output, else
  ``{predecessorId: output}`` for several delivering edges. An edge not taken never contributes.
- Loops (SPEC "loop controller"): an edge into a node named in ``metadata.cycleEntryPoints`` from a node
  it reaches is a back edge. Taking it starts the next iteration: every node of the loop body (the
  nodes on a forward path from the entry to the back edge's source) forgets its tokens, and the entry
  runs with the source's output as input. While a node takes a back edge, its edges leaving the body
  hold their tokens (the loop has not ended). Nested loops are this rule applied to the inner body.
- Failure (SPEC "Retries"): ``maxRetries`` attempts, then the fallback (a ``uses`` key, or a node id
  whose implementation and params run in place) once; if that fails too the run fails with the node
  named, and nothing else runs. A ``sleepMs`` at least the node's ``timeout`` is a timed-out attempt.
- Timing (issue 16): sequential execution is the timing-independent outcome: an ``any`` join runs once,
  its slow siblings still run, and the run completes when nothing is left, with every output.
- ``wait``: the branch parks; when nothing else is left the run would be ``awaiting``; the caller's
  resume plan (node id -> action, output) continues it, routing by the action.
- ``subflow``: runs the child blueprint with this interpreter; ``inputs`` {childKey: parentKey} seed
  the child context, ``outputs`` {parentKey: childKey} copy back (a child key naming a node means its
  output); the node's output is the child's final context.
- ``batch-scatter``/``batch-gather``: one worker (``<scatterId>_<i>``, ``uses: workerUsesKey``) per item
  of the list input, gathered in input order into ``params.outputKey`` and the gather's output.
- ``sleep``: passes its input on. ``loop-controller``: no output (null), as in Flowcraft (README).

Counts are node executions (one per node run, whatever its attempts), keyed ``<blueprintId>:<nodeId>``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowcraft_core.expressions import SafeEvaluator
from flowcraft_core.models import EdgeDefinition, NodeDefinition, WorkflowBlueprint

OUTPUTS = "_outputs."
INPUTS = "_inputs."

# behave(uses, node_id, params, input, attempt, get) -> object with .output, .action, .sets; raises on failure
Behave = Callable[[str, str, dict[str, Any], Any, int, Callable[[str], Any]], Any]


@dataclass
class Outcome:
    """How a run ended in the reference."""

    status: str  # completed | failed
    context: dict[str, Any]
    counts: Counter[str] = field(default_factory=Counter)
    failed_node: str | None = None
    error: str | None = None
    awaited: list[str] = field(default_factory=list)  # wait nodes the run paused at, in order


class _Failed(Exception):
    def __init__(self, node_id: str, message: str) -> None:
        super().__init__(message)
        self.node_id = node_id


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The context for expressions: flat keys, dotted keys also as nested dicts, and bare node ids
    (SPEC: ``a.ok`` resolves to ``_outputs.a.ok``; as README says, the output wins over a context key
    of the same name)."""
    view: dict[str, Any] = dict(flat)
    for key, value in flat.items():
        parts = key.split(".")
        if len(parts) < 2:
            continue
        cursor = view
        for part in parts[:-1]:
            if not isinstance(cursor.get(part), dict):
                cursor[part] = {}
            cursor = cursor[part]
        cursor.setdefault(parts[-1], value)
    for key, value in flat.items():
        if key.startswith(OUTPUTS) and "." not in key[len(OUTPUTS):]:
            view[key[len(OUTPUTS):]] = value
    return view


class Reference:
    """Runs blueprints by SPEC, sequentially; ``behave`` implements the non-built-in nodes."""

    def __init__(self, blueprints: Mapping[str, WorkflowBlueprint], behave: Behave) -> None:
        self.blueprints = dict(blueprints)
        self.behave = behave
        self.evaluator = SafeEvaluator()

    def run(self, blueprint_id: str, context: Mapping[str, Any] | None = None,
            resume: Mapping[str, tuple[str | None, Any]] | None = None) -> Outcome:
        """Run a blueprint to its end; resume gives each wait node's (action, output)."""
        counts: Counter[str] = Counter()
        walk = _Walk(self, self.blueprints[blueprint_id], dict(context or {}), counts, dict(resume or {}))
        try:
            walk.run()
        except _Failed as failed:
            return Outcome("failed", walk.context, counts, failed.node_id, str(failed), walk.awaited)
        return Outcome("completed", walk.context, counts, awaited=walk.awaited)


class _Walk:
    """One run of one blueprint."""

    def __init__(self, ref: Reference, bp: WorkflowBlueprint, context: dict[str, Any], counts: Counter[str],
                 resume: dict[str, tuple[str | None, Any]]) -> None:
        self.ref = ref
        self.bp = bp
        self.context = context
        self.counts = counts
        self.resume = resume
        self.awaited: list[str] = []
        self.nodes = {n.id: n for n in bp.nodes}
        self.out: dict[str, list[EdgeDefinition]] = {n: [] for n in self.nodes}
        self.inc: dict[str, list[EdgeDefinition]] = {n: [] for n in self.nodes}
        for e in bp.edges:
            self.out[e.source].append(e)
            self.inc[e.target].append(e)
        entries = set(bp.metadata.cycle_entry_points)
        self.starts = [n for n in self.nodes if not self.inc[n]] or [
            n for n in bp.metadata.cycle_entry_points if n in self.nodes]
        # A back edge closes a declared cycle: it enters an entry point from a node that every path from
        # the start passes the entry point to reach (the entry point dominates it; its loop body).
        self.back = {id(e) for e in bp.edges if e.target in entries and self._reaches(e.target, e.source)
                     and e.source not in self._reach_avoiding(e.target)}
        self.fwd_in = {n: [e for e in self.inc[n] if id(e) not in self.back] for n in self.nodes}
        # The body of each back edge: nodes on a forward path from its target to its source.
        self.body: dict[int, set[str]] = {}
        for e in bp.edges:
            if id(e) in self.back:
                after = self._forward_reach(e.target)
                self.body[id(e)] = {n for n in after if e.source in self._forward_reach(n)}
        # Per node: tokens received on forward edges in this iteration, and whether it ran or was skipped.
        self.tokens: dict[str, dict[int, tuple[bool, Any]]] = {n: {} for n in self.nodes}
        self.state: dict[str, str] = {}
        self.queue: deque[tuple[str, Any]] = deque()  # (node, its input)
        self.parked: deque[str] = deque()

    # ---------------------------------------------------------------- graph facts
    def _reaches(self, a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            n = todo.pop()
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(e.target for e in self.out[n])
        return False

    def _reach_avoiding(self, avoid: str) -> set[str]:
        seen: set[str] = set()
        todo = [n for n in self.starts if n != avoid]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(e.target for e in self.out[n] if e.target != avoid)
        return seen

    def _forward_reach(self, a: str) -> set[str]:
        seen, todo = set(), [a]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(e.target for e in self.out[n] if id(e) not in self.back)
        return seen

    # ---------------------------------------------------------------- the walk
    def run(self) -> None:
        for n in self.starts:
            self.queue.append((n, self.context.get(INPUTS + n)))
        while self.queue or self.parked:
            while self.queue:
                node_id, node_input = self.queue.popleft()
                self._execute(self.nodes[node_id], node_input)
            if self.parked:
                # Nothing else can run: the run is awaiting; the caller resumes this wait node.
                node_id = self.parked.popleft()
                self.awaited.append(node_id)
                action, output = self.resume.get(node_id, (None, None))
                self.context[OUTPUTS + node_id] = output
                self._route(self.nodes[node_id], output, action)

    def _deliver(self, edge: EdgeDefinition, taken: bool, value: Any) -> None:
        target = edge.target
        node = self.nodes[target]
        tokens = self.tokens[target]
        tokens[id(edge)] = (taken, value)
        if self.state.get(target):
            return  # an any join that already ran ignores later arrivals
        expected = self.fwd_in[target]
        any_join = node.config.join_strategy == "any"
        if any_join and taken:
            self._fire(node, [(edge, value)])
        elif len(tokens) == len(expected):
            delivering = [(e, tokens[id(e)][1]) for e in expected if tokens[id(e)][0]]
            if delivering:
                self._fire(node, delivering)
            else:
                self._skip(node)

    def _fire(self, node: NodeDefinition, delivering: list[tuple[EdgeDefinition, Any]]) -> None:
        self.state[node.id] = "ran"
        self.queue.append((node.id, self._input(node, delivering)))

    def _skip(self, node: NodeDefinition) -> None:
        self.state[node.id] = "skipped"
        for edge in self.out[node.id]:
            if id(edge) not in self.back:
                self._deliver(edge, False, None)

    def _input(self, node: NodeDefinition, delivering: list[tuple[EdgeDefinition, Any]]) -> Any:
        if isinstance(node.inputs, str):
            return self._lookup(node.inputs)
        if isinstance(node.inputs, Mapping):
            return {name: self._lookup(key) for name, key in node.inputs.items()}
        if len(delivering) == 1:
            return delivering[0][1]
        return {e.source: value for e, value in delivering}

    def _lookup(self, key: str) -> Any:
        if not key.startswith("_") and OUTPUTS + key in self.context:
            return self.context[OUTPUTS + key]
        return self.context.get(key)

    # ---------------------------------------------------------------- one node
    def _execute(self, node: NodeDefinition, node_input: Any) -> None:
        self.counts[f"{self.bp.id}:{node.id}"] += 1
        if node.uses == "wait" or node.uses == "webhook":
            self.parked.append(node.id)
            return
        output, action = self._attempts(node, node_input)
        self.context[OUTPUTS + node.id] = output
        self._route(node, output, action)

    def _attempts(self, node: NodeDefinition, node_input: Any) -> tuple[Any, str | None]:
        config = node.config
        last = "no attempt"
        for attempt in range(1, config.max_retries + 1):
            try:
                return self._attempt(node.uses, node, node.params, node_input, attempt, config.timeout)
            except _Failed:
                raise
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
        if config.fallback is not None:
            fallback = self.nodes.get(config.fallback)
            uses, params = (fallback.uses, fallback.params) if fallback else (config.fallback, node.params)
            try:
                return self._attempt(uses, node, params, node_input, 1, None)
            except _Failed:
                raise
            except Exception as exc:
                last += f" (and its fallback failed: {exc})"
        raise _Failed(node.id, f"node {node.id!r} failed: {last}")

    def _attempt(self, uses: str, node: NodeDefinition, params: dict[str, Any], node_input: Any, attempt: int,
                 timeout: float | None) -> tuple[Any, str | None]:
        """One attempt; context writes land only when it succeeds (SPEC: a retried attempt leaves nothing)."""
        if timeout is not None and float(params.get("sleepMs", 0) or 0) >= timeout:
            raise TimeoutError(f"timed out after {timeout:g} ms")
        if uses == "sleep":
            return node_input, None
        if uses == "loop-controller":
            return self._loop_controller(node, params, node_input)
        if uses == "subflow":
            return self._subflow(node, params), None
        if uses == "batch-scatter":
            return self._scatter(node, params, node_input), None
        if uses == "batch-gather":
            gathered = [self.context.get(OUTPUTS + w) for w in self.context.get(f"_ref.workers.{node.id}", [])]
            self.context[str(params.get("outputKey") or node.id)] = gathered
            return gathered, None
        result = self.ref.behave(uses, node.id, params, node_input, attempt, self.context.get)
        self.context.update(result.sets)
        return result.output, result.action

    def _loop_controller(self, node: NodeDefinition, params: dict[str, Any], node_input: Any) -> tuple[Any, str]:
        key = f"_loop.{node.id}.iterations"
        done = int(self.context.get(key) or 0) + 1
        view = nested(self.context)
        keep_going = bool(self.ref.evaluator.evaluate(str(params["condition"]),
                                                      {**view, "context": view, "input": node_input}))
        if keep_going and done >= int(params.get("maxIterations", 1000)):
            if params.get("onMaxIterations", "fail") != "break":
                raise RuntimeError(f"loop {node.id!r} reached maxIterations")
            keep_going = False
        self.context[key] = done if keep_going else 0
        # As in Flowcraft (README, "Built-in nodes"), the controller has no output: the loop's body and
        # exit read the context instead.
        return None, "continue" if keep_going else "break"

    def _subflow(self, node: NodeDefinition, params: dict[str, Any]) -> Any:
        child_context: dict[str, Any] = {}
        for child_key, parent_key in (params.get("inputs") or {}).items():
            value = self.context.get(str(parent_key))
            child_context[child_key] = self.context.get(OUTPUTS + str(parent_key)) if value is None else value
        child = _Walk(self.ref, self.ref.blueprints[str(params["blueprintId"])], child_context, self.counts, {})
        try:
            child.run()
        except _Failed as failed:
            raise RuntimeError(f"subflow {params['blueprintId']!r} failed: {failed}") from None
        final = child.context
        for parent_key, child_key in (params.get("outputs") or {}).items():
            value = final.get(OUTPUTS + str(child_key))
            self.context[str(parent_key)] = final.get(str(child_key)) if value is None else value
        return final

    def _scatter(self, node: NodeDefinition, params: dict[str, Any], items: Any) -> Any:
        items = items if items is not None else []
        if not isinstance(items, list):
            raise TypeError("batch-scatter needs a list")
        gather = str(params["gatherNodeId"])
        workers = [f"{node.id}_{i}" for i in range(len(items))]
        for worker_id, item in zip(workers, items, strict=True):
            self.counts[f"{self.bp.id}:{worker_id}"] += 1
            worker = NodeDefinition(id=worker_id, uses=str(params["workerUsesKey"]),
                                    params=params.get("workerParams") or {})
            output, _action = self._attempts(worker, item)
            self.context[OUTPUTS + worker_id] = output
        self.context[f"_ref.workers.{gather}"] = workers
        return {"gatherNodeId": gather, "hasMore": False}

    # ---------------------------------------------------------------- routing
    def _route(self, node: NodeDefinition, output: Any, action: str | None) -> None:
        edges = self.out[node.id]
        view: dict[str, Any] | None = None

        def scope() -> dict[str, Any]:
            nonlocal view
            if view is None:
                view = nested(self.context)
            return {**view, "context": view, "result": {"output": output, "action": action}, "input": output}

        def passes(edge: EdgeDefinition) -> bool:
            return edge.condition is None or bool(self.ref.evaluator.evaluate(edge.condition, scope()))

        taken = [e for e in edges if action is not None and e.action == action and passes(e)]
        if not taken:
            taken = [e for e in edges if e.action is None and passes(e)]
        back_taken = [e for e in taken if id(e) in self.back]
        body = set().union(*(self.body[id(e)] for e in back_taken)) if back_taken else set()
        for edge in edges:
            if id(edge) in self.back:
                continue
            if back_taken and edge.target not in body:
                continue  # the loop goes on: its exits hold their tokens
            is_taken = edge in taken
            value = output
            if is_taken and edge.transform is not None:
                value = self.ref.evaluator.evaluate(edge.transform, scope())
            self._deliver(edge, is_taken, value)
        for edge in back_taken:
            for n in self.body[id(edge)]:
                self.tokens[n] = {}
                self.state.pop(n, None)
            self.state[edge.target] = "ran"
            self.queue.append((edge.target, output))

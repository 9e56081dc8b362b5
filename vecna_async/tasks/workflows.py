"""Workflows: ``Group`` (run together), ``Chain`` (one after another, each result appended to the
next task's args) and ``Chord`` (a group, then a callback that gets every result in group order).

>>> g = Group(Signature("add", args=[1, 1]), Signature("add", args=[5, 5]))
>>> len(g.tasks), g.tasks[0].group_id == g.group_id
(2, True)
"""

from __future__ import annotations

import uuid

from vecna_async.tasks.signature import Signature


class Group:
    """Tasks that run in parallel, independent of each other; they share one ``group_id`` (which
    is also their ``code``, so the group can be canceled as one)."""

    def __init__(self, *tasks: Signature, group_id: str | None = None) -> None:
        if not tasks:
            raise ValueError("a Group needs at least one task")
        self.tasks = list(tasks)
        self.group_id = group_id or uuid.uuid4().hex
        for t in self.tasks:
            t.group_id = self.group_id
            t.group_task_count = len(self.tasks)

    def __repr__(self) -> str:
        return f"Group({', '.join(t.name for t in self.tasks)}; id={self.group_id})"


class Chain:
    """Tasks run one after another; each result is appended to the next task's args
    (unless either is ``immutable``). The chain stops at the first task that fails for good."""

    def __init__(self, *tasks: Signature) -> None:
        if not tasks:
            raise ValueError("a Chain needs at least one task")
        self.tasks = list(tasks)

    def __repr__(self) -> str:
        return f"Chain({' -> '.join(t.name for t in self.tasks)})"


class Chord:
    """A group, then ``callback`` with every member's results appended to its args, in group
    order; sent exactly once, when the last member succeeds. If a member fails for good the
    callback is not sent and the chord's result reports the failure."""

    def __init__(self, group: Group, callback: Signature) -> None:
        self.group = group
        self.callback = callback

    def __repr__(self) -> str:
        return f"Chord({self.group!r} -> {self.callback.name})"

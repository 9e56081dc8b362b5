"""Redis Cluster resharding: the slot of a queue moves to another node while vecna works on it.

Every queue script probes its slot before writing and answers TRYAGAIN while the slot migrates,
so no script is ever half-applied, nor run on the target before the slot's keys are all there.
Seen in the previous release: a settle redirected (ASK) to the target found no message there
and dropped the outcome, so the task ran again; under load, workers stopped on the replies.

The slot is moved the way ``redis-cli --cluster reshard`` does it: IMPORTING on the target,
MIGRATING on the source, keys moved with MIGRATE a batch at a time, then the slot given to the
target (CLUSTER SETSLOT ... NODE) on every node.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anyio
import pytest

from tests.support.redis_procs import RedisClusterSet, RedisProcess
from tests.support.vecna import eventually, running_worker
from vecna_async import (
    BrokerRefused,
    BrokerUnavailable,
    Chain,
    Config,
    RedisConfig,
    Server,
    Signature,
    State,
)
from vecna_async.redis_errors import is_transient

pytestmark = pytest.mark.anyio
QUEUE = "vecna_tasks"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterSet]:
    with RedisClusterSet(masters=3) as c:
        yield c


def _node_id(node: RedisProcess) -> str:
    with node.client(decode_responses=True) as client:
        return str(client.execute_command("CLUSTER", "MYID"))


class SlotMove:
    """Moves one slot from its owner to another node, step by step."""

    def __init__(self, cluster: RedisClusterSet, slot: int) -> None:
        self.cluster = cluster
        self.slot = slot
        with cluster.nodes[0].client() as client:
            owner_port = next(int(r[2][1]) for r in client.cluster("SLOTS") if r[0] <= slot <= r[1])
        self.source = next(n for n in cluster.nodes if n.port == owner_port)
        self.target = next(n for n in cluster.nodes if n.port != owner_port)

    def begin(self) -> None:
        with self.target.client() as t, self.source.client() as s:
            t.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", _node_id(self.source))
            s.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", _node_id(self.target))

    def migrate(self, keys: list[bytes]) -> None:
        if keys:
            with self.source.client() as s:
                s.execute_command(
                    "MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "KEYS", *keys
                )

    def keys_left(self, count: int = 10) -> list[bytes]:
        with self.source.client() as s:
            return list(s.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, count))

    def finish(self) -> None:
        while keys := self.keys_left(50):
            self.migrate(keys)
        target_id = _node_id(self.target)
        for node in self.cluster.nodes:
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", target_id)


def _server(cluster: RedisClusterSet) -> Server:
    url = "redis://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
    r = RedisConfig(
        key_prefix=f"mig{uuid.uuid4().hex[:8]}", lease_timeout=2.0, heartbeat_interval=0.5
    )
    return Server(Config(broker=url, redis=r))


def _slot_of(server: Server, cluster: RedisClusterSet) -> int:
    with cluster.nodes[0].client() as client:
        return int(client.execute_command("CLUSTER", "KEYSLOT", server.keys.queue(QUEUE).ready))


async def add(a: int, b: int) -> int:
    return a + b


async def test_a_claim_while_the_slot_migrates_changes_nothing(cluster: RedisClusterSet) -> None:
    """A claim on a busy queue whose next message's record has moved already: refused before
    it takes anything (popping the id and then failing on its record would lose it)."""
    server = _server(cluster)
    server.register_task("add", add)
    async with server:
        broker = server.get_broker()
        q = server.keys.queue(QUEUE)
        # a busy queue: a task no worker here knows (parked), one running (leased), a cancel
        # (tombstones), a dead letter's aftermath pending; then three tasks waiting
        await server.send_task(Signature("other"))
        running = await server.send_task(Signature("add", args=[0, 0]))
        sent = [await server.send_task(Signature("add", args=[i, i])) for i in range(1, 4)]
        (claimed,) = await broker.claim(QUEUE, 1, ["add"])
        assert claimed.id == running.task_id
        assert await broker.cancel(QUEUE, ["never-sent"]) == [True]
        with SlotMove(cluster, _slot_of(server, cluster)).source.client() as s:
            s.zadd(q.dead_pending, {"ghost": 2**50})
        move = SlotMove(cluster, _slot_of(server, cluster))
        move.begin()
        # the record of the next message to be claimed is on the target already
        move.migrate([q.record(sent[0].task_id).encode()])
        with move.source.client() as s:
            before = {k: s.dump(k) for k in s.keys("*")}
        with pytest.raises(BrokerRefused) as info:
            await broker.claim(QUEUE, 3, ["add"])
        assert info.value.transient
        assert "TRYAGAIN" in info.value.reply
        with move.source.client() as s:
            assert s.zcard(q.ready) == 3, "the claim took a message and then failed"
            after = {k: s.dump(k) for k in s.keys("*")}
        assert after == before, "the claim changed something before it was refused"
        move.finish()
        async with running_worker(server, 4):
            assert [await r.get(timeout=15) for r in sent] == [2, 4, 6]


async def test_an_outcome_settled_while_the_slot_migrates_is_applied_whole(
    cluster: RedisClusterSet,
) -> None:
    """Seen: a settle sent while the slot migrated was redirected (ASK) to the target, which did
    not have the message yet: the outcome was dropped as "lease lost", and the task ran again
    after its lease expired. Now it is refused whole (TRYAGAIN) and applied, once, when the slot
    has settled."""
    server = _server(cluster)
    release = anyio.Event()
    runs: list[int] = []

    async def gated(a: int) -> int:
        runs.append(a)
        await release.wait()
        return a

    server.register_task("gated", gated)
    server.register_task("add", add)
    async with server, running_worker(server, 4):
        chain = Chain(Signature("gated", args=[1]), Signature("add", args=[10]))
        ch = await server.send_chain(chain)
        first = ch.results[0]

        async def running() -> bool:
            state = await first.get_state()
            return state is not None and state.state is State.STARTED

        await eventually(running, timeout=10)
        move = SlotMove(cluster, _slot_of(server, cluster))
        move.begin()
        release.set()  # its outcome is settled while the slot migrates
        await anyio.sleep(0.5)  # the scenario: the worker tries to settle during the move
        await anyio.to_thread.run_sync(move.finish)
        assert await ch.get(timeout=15) == 11
        assert await first.get(timeout=5) == 1
    assert runs == [1], "the outcome was lost and the task ran again"


async def test_tasks_flow_while_their_slot_moves_to_another_node(
    cluster: RedisClusterSet,
) -> None:
    server = _server(cluster)
    runs: dict[int, int] = {}

    async def count(i: int) -> int:
        runs[i] = runs.get(i, 0) + 1
        return i

    server.register_task("count", count)
    async with server, running_worker(server, 20):
        move = SlotMove(cluster, _slot_of(server, cluster))
        sent = []
        refusals: list[BrokerRefused | BrokerUnavailable] = []
        for i in range(100):
            sent.append(await server.send_task(Signature("count", args=[i])))
        move.begin()
        async with anyio.create_task_group() as tg:

            async def keep_sending() -> None:
                for i in range(100, 200):
                    while True:
                        try:
                            sent.append(await server.send_task(Signature("count", args=[i])))
                            break
                        except (BrokerRefused, BrokerUnavailable) as exc:
                            # TRYAGAIN while the slot moves; redis-py may also drop a connection
                            # while it re-reads the slot map (the send did not happen: retried)
                            refusals.append(exc)
                            await anyio.sleep(0.05)

            tg.start_soon(keep_sending)
            # move the keys a few at a time while tasks are claimed and settled
            while keys := await anyio.to_thread.run_sync(move.keys_left, 5):
                await anyio.to_thread.run_sync(move.migrate, keys)
                await anyio.sleep(0.01)
            await anyio.to_thread.run_sync(move.finish)
        values = [await r.get(timeout=30) for r in sent]
    assert values == list(range(200))
    assert runs == dict.fromkeys(range(200), 1)
    assert all(is_transient(exc) for exc in refusals), refusals

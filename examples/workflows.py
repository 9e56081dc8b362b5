"""Groups, chords and chains (the seed's examples: the chord gives 20, the chain 48).

VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/workflows.py
"""

from __future__ import annotations

import anyio

from vecna_async import Chain, Chord, Config, Group, Server, Signature

server = Server(Config.from_env())


@server.task(name="add")
async def add(*numbers: int) -> int:
    return sum(numbers)


@server.task(name="multiply")
async def multiply(*numbers: int) -> int:
    product = 1
    for n in numbers:
        product *= n
    return product


async def main() -> None:
    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("workflows", concurrency=10)
        tg.start_soon(worker.launch)

        group = Group(Signature("add", args=[1, 1]), Signature("add", args=[5, 5]))
        results = await server.send_group(group, concurrency=0)
        print("group:", [await r.get(timeout=5) for r in results])

        # multiply(add(1, 1), add(5, 5)): the callback gets every result, in group order
        chord = Chord(
            Group(Signature("add", args=[1, 1]), Signature("add", args=[5, 5])),
            Signature("multiply"),
        )
        print("chord:", await (await server.send_chord(chord)).get(timeout=5))

        # multiply(4, add(5, 5, add(1, 1))): each result is appended to the next task's args
        chain = Chain(
            Signature("add", args=[1, 1]),
            Signature("add", args=[5, 5]),
            Signature("multiply", args=[4]),
        )
        print("chain:", await (await server.send_chain(chain)).get(timeout=5))

        worker.quit()


if __name__ == "__main__":
    anyio.run(main)

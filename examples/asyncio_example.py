"""asyncio: 20 tasks go through a backlog of 2 while a heartbeat coroutine
ticks on, then a timeout, a cancellation and an async map.

    $ python examples/asyncio_example.py
    20 tasks through a backlog of 2; the loop ticked 52 times meanwhile
    squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121, 144, 169, 196, 225, 256, 289, 324, 361]
    ran too long, killed: the task timed out; worker 4242 was killed
    wait_for gave up; the task was cancelled and killed: True
    amap, in order: 0 1 4 9 16 25 36 49
"""

import asyncio
import time

import deadpool


def square(i):
    time.sleep(0.05)
    return i * i


async def main():
    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.ensure_future(heartbeat())
    async with deadpool.Deadpool(max_workers=2, max_backlog=2) as exe:
        # Each asubmit waits, without blocking the loop, while 2 tasks wait.
        futures = [await exe.asubmit(square, i) for i in range(20)]
        print(f"20 tasks through a backlog of 2; the loop ticked {ticks} times meanwhile")
        print("squares:", await asyncio.gather(*futures))

        slow = await exe.asubmit(time.sleep, 10, deadpool_timeout=0.2)
        try:
            await slow
        except deadpool.TimeoutError as e:
            print("ran too long, killed:", e)

        stuck = await exe.asubmit(time.sleep, 10)
        try:
            await asyncio.wait_for(stuck, 0.2)
        except asyncio.TimeoutError:
            print("wait_for gave up; the task was cancelled and killed:", stuck.cancelled())

        print("amap, in order:", *[r async for r in exe.amap(square, range(8))])
    beat.cancel()


if __name__ == "__main__":
    asyncio.run(main())

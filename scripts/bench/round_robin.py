"""A round-robin TCP proxy on loopback, for measuring Kotae replicas on one machine: each new
connection goes to the next backend that accepts it (a dead one is skipped).

    python3 scripts/bench/round_robin.py LISTEN_PORT BACKEND_PORT...
"""
import asyncio
import itertools
import sys

listen = int(sys.argv[1])
backends = [int(p) for p in sys.argv[2:]]
turn = itertools.cycle(range(len(backends)))


async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()


async def handle(cr, cw):
    for _ in backends:
        port = backends[next(turn)]
        try:
            br, bw = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            continue
    else:
        cw.close()
        return
    await asyncio.gather(pipe(cr, bw), pipe(br, cw))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())

"""A hostile client for the compose tier, run in a container of its own on the compose network (its own address, as
the edge sees it): ``python hostile.py half-heads HOST PORT`` keeps 1,000 connections open, each with a partial
request head (reopening those the edge closes), ``python hostile.py floods HOST PORT`` sends header floods from 4
connections, each again once answered. Standard library only (it runs in the gateway image); prints ``ready`` once
the attack is in place, then a tally every 2 s. The edge must serve a third address meanwhile
(tests/compose/test_compose.py, issue 25's test through separate containers)."""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
from collections import Counter

HALF_HEAD = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-"
HALF_HEADS = 1_000
FLOODERS = 4
FLOOD_CHUNK = 1_024
FLOOD_MAX = 1_048_576


def open_half_head(host: str, port: int) -> socket.socket | None:
    try:
        sock = socket.create_connection((host, port), timeout=5)
        sock.sendall(HALF_HEAD)
        return sock
    except OSError:
        return None


def half_heads(host: str, port: int) -> None:
    held = [open_half_head(host, port) for _ in range(HALF_HEADS)]
    print(f"ready: {sum(s is not None for s in held)} of {HALF_HEADS} connections opened", flush=True)
    reopened = 0
    while True:
        time.sleep(5)  # the edge closes a half head after 10 s (client_header_timeout): reopened within 5 s
        live = [s for s in held if s is not None]
        poller = select.poll()  # not select(): 1,000 connections take descriptors over its limit of 1,023
        for sock in live:
            poller.register(sock, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(0)}  # readable: the edge closed it (or refused it at accept)
        closed = {sock for sock in live if sock.fileno() in readable}
        for i, sock in enumerate(held):
            if sock is None or sock in closed:
                if sock is not None:
                    sock.close()
                held[i] = open_half_head(host, port)
                reopened += 1
        print(f"half heads: {sum(s is not None for s in held)} held, {reopened} reopened", flush=True)


def flood_once(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            sent = 0
            while sent < FLOOD_MAX and not select.select([sock], [], [], 0.002)[0]:
                sock.sendall(b"a" * FLOOD_CHUNK)
                sent += FLOOD_CHUNK
            answer = sock.recv(65_536)
            return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "no answer"
    except OSError as exc:
        return type(exc).__name__


def floods(host: str, port: int) -> None:
    tally: Counter[str] = Counter()

    def keep_flooding() -> None:
        while True:
            tally[flood_once(host, port)] += 1

    for _ in range(FLOODERS):
        threading.Thread(target=keep_flooding, daemon=True).start()
    while sum(tally.values()) < FLOODERS:
        time.sleep(0.01)
    print("ready", flush=True)
    while True:
        time.sleep(2)
        print(f"floods: {dict(tally)}", flush=True)


if __name__ == "__main__":
    role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"half-heads": half_heads, "floods": floods}[role](host, port)

#!/usr/bin/env python3
"""Delay, jitter and loss on one host's link without sch_netem (scripts/netlab.py).

Run inside a host's namespace, bound to an NFQUEUE that iptables feeds with the host's
packets (both ways): each packet is dropped with ``--loss-pct`` or held for
``--delay-ms`` +- ``--jitter-ms`` (uniform) and then accepted. The queue is fail-open and
the rules use ``--queue-bypass``, so packets pass untouched whenever this daemon is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import random
import select
import signal
import socket
import struct
import threading
import time
from collections import Counter

NLM_F_REQUEST, NLM_F_ACK = 1, 4
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NF_DROP, NF_ACCEPT = 0, 1


def _nfq_msg(msg_type: int, queue: int, attrs: list[tuple[int, bytes]], flags: int, seq: int):
    payload = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)
    for atype, data in attrs:
        alen = 4 + len(data)
        payload += struct.pack("=HH", alen, atype) + data + b"\0" * (-alen % 4)
    hdr = struct.pack(
        "=IHHII", 16 + len(payload), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, seq, 0
    )
    return hdr + payload


def impair_main(a) -> None:
    """Hold each queued packet for delay +- jitter (uniform) or drop it with loss_pct."""
    rng = random.Random(a.seed)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
    with contextlib.suppress(OSError):
        s.setsockopt(270, 5, 1)  # SOL_NETLINK, NETLINK_NO_ENOBUFS
    s.bind((0, 0))
    seq = 1

    def config(attrs):
        nonlocal seq
        seq += 1
        s.send(_nfq_msg(NFQNL_MSG_CONFIG, a.queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq))
        data = s.recv(65536)
        mtype = struct.unpack_from("=H", data, 4)[0]
        if mtype == 2:  # NLMSG_ERROR
            err = struct.unpack_from("=i", data, 16)[0]
            if err != 0:
                raise OSError(-err, f"nfqueue config failed: {os.strerror(-err)}")

    config([(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET))])
    config([(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))])
    config([(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 8192))])
    config(
        [
            (NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)),
            (NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)),
        ]
    )
    print(
        f"bound to queue {a.queue}: delay {a.delay_ms} ms +- {a.jitter_ms} ms, loss {a.loss_pct}%",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    heap: list[tuple[float, int]] = []
    stats = Counter()
    end = time.monotonic() + a.stop_after

    def verdict(pid: int, v: int) -> None:
        s.send(
            _nfq_msg(
                NFQNL_MSG_VERDICT,
                a.queue,
                [(NFQA_VERDICT_HDR, struct.pack("!II", v, pid))],
                NLM_F_REQUEST,
                0,
            )
        )

    s.setblocking(False)
    last_report = time.monotonic()
    while not stop.is_set() and time.monotonic() < end:
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, pid = heapq.heappop(heap)
            verdict(pid, NF_ACCEPT)
        timeout = min(0.2, max(0.0, heap[0][0] - now)) if heap else 0.2
        r, _, _ = select.select([s], [], [], timeout)
        if not r:
            continue
        while True:
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                break
            off = 0
            while off + 16 <= len(data):
                mlen, mtype = struct.unpack_from("=IH", data, off)
                if mlen < 16:
                    break
                if mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    aoff = off + 20
                    while aoff + 4 <= off + mlen:
                        alen, atype = struct.unpack_from("=HH", data, aoff)
                        if alen < 4:
                            break
                        if atype & 0x3FFF == NFQA_PACKET_HDR:
                            pid = struct.unpack_from("!I", data, aoff + 4)[0]
                            stats["packets"] += 1
                            if rng.random() * 100 < a.loss_pct:
                                stats["dropped"] += 1
                                verdict(pid, NF_DROP)
                            else:
                                hold = max(0.0, a.delay_ms + rng.uniform(-a.jitter_ms, a.jitter_ms))
                                heapq.heappush(heap, (time.monotonic() + hold / 1000, pid))
                            break
                        aoff += (alen + 3) & ~3
                off += (mlen + 3) & ~3
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            print(
                f"packets {stats['packets']} dropped {stats['dropped']} held {len(heap)}",
                flush=True,
            )
    for _, pid in heap:  # let what is held go before leaving
        with contextlib.suppress(OSError):
            verdict(pid, NF_ACCEPT)
    print(f"packets {stats['packets']} dropped {stats['dropped']} (final)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--queue", type=int, default=7)
    p.add_argument("--delay-ms", type=float, default=50)
    p.add_argument("--jitter-ms", type=float, default=20)
    p.add_argument("--loss-pct", type=float, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stop-after", type=float, default=1800)
    impair_main(p.parse_args())


if __name__ == "__main__":
    main()

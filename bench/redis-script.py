#!/usr/bin/env python3
"""Drives a Redis with ticketrush's own scripts, as a node would, with nothing else in the way:
a sale of TICKETS tickets, then BATCHES calls of `reserve_batch.lua` of BATCH new users each
(every item a win), the scripts read from crates/store/lua (the prelude prepended, as the Rust
store does). Prints one line: reservations made, the Redis CPU (used_cpu_user + used_cpu_sys)
and AOF bytes per reservation, the commands run inside the scripts per reservation.

Deterministic (the same calls every run), so bench/redis-callgrind.sh can count Redis's
instructions per reservation. Standard library only; RESP by hand.
  bench/redis-script.py PORT [BATCHES] [BATCH] [SALE]
"""
import os
import socket
import sys

LUA = os.environ.get("LUA_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "store", "lua")
# LAYOUT=triples drives the scripts of trees before stop 25 (LUA_DIR=that tree's lua/): their
# reserve_batch took an id, a user and a key per item and answered an element per item.
TRIPLES = os.environ.get("LAYOUT") == "triples"
# SaleKeys::in_script_order (crates/store/src/redis_store.rs)
SUFFIXES = ["sale", "leases", "users", "idem", "res", "due", "events", "queue", "qpre", "wl",
            "wlq", "dueb"]
ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ0123456789"


class Resp:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()


def script(name):
    """A script as the Rust store loads it (crates/store/src/redis_store.rs, Scripts::load)."""
    parts = ["prelude.lua"]
    if name != "reserve_batch.lua" and os.path.exists(os.path.join(LUA, "holds.lua")):
        parts.append("holds.lua")
    parts.append(name)
    texts = []
    for part in parts:
        with open(os.path.join(LUA, part)) as f:
            texts.append(f.read())
    return "\n".join(texts)


def info(r, section):
    out = {}
    for line in r.call("INFO", section).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


def inner_calls(r):
    n = 0
    for k, v in info(r, "commandstats").items():
        if k.startswith("cmdstat_") and k not in ("cmdstat_evalsha", "cmdstat_info",
                                                  "cmdstat_script", "cmdstat_config"):
            n += int(v.split(",")[0].split("=")[1])
    return n


def main():
    port = int(sys.argv[1])
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    sale = sys.argv[4] if len(sys.argv) > 4 else "s"
    tickets = int(os.environ.get("TICKETS", "100000000"))
    r = Resp(port)
    keys = [f"{{sale:{sale}}}:{s}" for s in SUFFIXES]
    create = r.call("SCRIPT", "LOAD", script("create_sale.lua"))
    reserve = r.call("SCRIPT", "LOAD", script("reserve_batch.lua"))
    spec = ('{"id":"%s","total":%d,"per_user_limit":1,"hold_seconds":600,"opens_at":0}'
            % (sale, tickets))
    reply = r.call("EVALSHA", create, len(keys), *keys, spec, tickets, 1, 600000, "", 0, "")
    if reply[0] != "OK":
        raise SystemExit(f"create_sale: {reply}")
    cpu0 = info(r, "cpu")
    aof0 = int(info(r, "persistence").get("aof_current_size", "0"))
    calls0 = inner_calls(r)
    won = 0
    seq = 0
    for b in range(batches):
        ids, users = [], []
        for _ in range(batch):
            seq += 1
            n, code = seq, []
            for _ in range(26):
                code.append(ALPHABET[n % 32])
                n //= 32
            ids.append("".join(code) + "." + sale)
            users.append(f"u{seq}")
        if TRIPLES:
            # Scripts before stop 25: backlog, then id, user, key for each item.
            args = ["200000"] + [a for i, u in zip(ids, users) for a in (i, u, "")]
        else:
            # reserve_batch.lua's ARGV: backlog, n, the ids, the users (no idempotency keys).
            args = ["200000", batch] + ids + users
        reply = r.call("EVALSHA", reserve, len(keys), *keys, *args)
        if reply[0] != "OK":
            raise SystemExit(f"reserve_batch: {reply}")
        won += sum(a == "R" for a in reply[4:]) if TRIPLES else reply[4].count("R")
    cpu1 = info(r, "cpu")
    aof1 = int(info(r, "persistence").get("aof_current_size", "0"))
    calls1 = inner_calls(r)
    cpu = sum(float(cpu1[k]) - float(cpu0[k]) for k in ("used_cpu_user", "used_cpu_sys"))
    user = float(cpu1["used_cpu_user"]) - float(cpu0["used_cpu_user"])
    won = max(won, 1)
    print(f"{won} reserved in {batches} calls of {batch}: redis cpu {cpu * 1e6 / won:.1f} us "
          f"(user {user * 1e6 / won:.1f}) per reservation, aof {(aof1 - aof0) / won:.0f} B, "
          f"commands {(calls1 - calls0) / won:.3f}")


if __name__ == "__main__":
    main()

"""Minimal inter-node collectives over TCP for the example trainer.

Rank 0 is the hub: every other rank connects to it (MASTER_ADDR:MASTER_PORT, from
Slurm's environment through the job script). ``gather`` brings every rank's payload to
rank 0, ``broadcast`` sends rank 0's payload to all. Every receive has a timeout: a
peer that dies, or is cut off, raises ``PeerLost`` within ``timeout_s`` instead of
hanging the job — the trainer then writes its triggered checkpoint.
"""

from __future__ import annotations

import socket
import struct
import time

_HEADER = struct.Struct("!Q")


class PeerLost(RuntimeError):
    """A peer stopped answering (crashed, killed, or its network was cut)."""


class Hub:
    def __init__(self, rank: int, world: int, address: str, port: int, *,
                 timeout_s: float = 10.0, connect_timeout_s: float = 120.0):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.peers: dict[int, socket.socket] = {}
        if world == 1:
            return
        if rank == 0:
            listener = socket.create_server(("0.0.0.0", port), reuse_port=False, backlog=world)
            listener.settimeout(connect_timeout_s)
            try:
                while len(self.peers) < world - 1:
                    connection, _ = listener.accept()
                    connection.settimeout(timeout_s)
                    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    peer = int(self._recv(connection, "hello").decode())
                    self.peers[peer] = connection
            except (TimeoutError, OSError) as error:
                raise PeerLost(f"only {len(self.peers) + 1} of {world} ranks joined: {error}") \
                    from None
            finally:
                listener.close()
        else:
            deadline = time.monotonic() + connect_timeout_s
            while True:
                try:
                    connection = socket.create_connection((address, port), timeout=5)
                    break
                except OSError as error:
                    if time.monotonic() > deadline:
                        raise PeerLost(f"cannot reach rank 0 at {address}:{port}: {error}") \
                            from None
                    time.sleep(0.2)
            connection.settimeout(timeout_s)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._send(connection, str(rank).encode(), "hello")
            self.peers[0] = connection

    def _send(self, connection: socket.socket, payload: bytes, what: str) -> None:
        try:
            connection.sendall(_HEADER.pack(len(payload)) + payload)
        except OSError as error:
            raise PeerLost(f"{what}: send failed: {error}") from None

    def _recv_exact(self, connection: socket.socket, size: int, what: str) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            try:
                count = connection.recv_into(view[received:])
            except OSError as error:  # timeouts included
                raise PeerLost(f"{what}: {error or 'timed out'}") from None
            if count == 0:
                raise PeerLost(f"{what}: connection closed by peer")
            received += count
        return bytes(buffer)

    def _recv(self, connection: socket.socket, what: str) -> bytes:
        (size,) = _HEADER.unpack(self._recv_exact(connection, _HEADER.size, what))
        return self._recv_exact(connection, size, what)

    def gather(self, payload: bytes) -> list[bytes] | None:
        """Rank 0 gets every rank's payload (index = rank); others get None."""
        if self.world == 1:
            return [payload]
        if self.rank != 0:
            self._send(self.peers[0], payload, "gather to rank 0")
            return None
        parts = [payload]
        for peer in range(1, self.world):
            parts.append(self._recv(self.peers[peer], f"gather from rank {peer}"))
        return parts

    def broadcast(self, payload: bytes | None) -> bytes:
        if self.world == 1:
            return payload
        if self.rank == 0:
            for peer in range(1, self.world):
                self._send(self.peers[peer], payload, f"broadcast to rank {peer}")
            return payload
        return self._recv(self.peers[0], "broadcast from rank 0")

    def close(self) -> None:
        for connection in self.peers.values():
            try:
                connection.close()
            except OSError:
                pass
        self.peers.clear()

"""Where the gRPC edge listens: plain settings, importable without grpcio."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GrpcEndpoint"]


@dataclass(frozen=True)
class GrpcEndpoint:
    """Where the gRPC service listens; ``port`` 0 takes any free port."""

    host: str = "127.0.0.1"
    port: int = 8001
    max_message_bytes: int = 64 << 20
    drain_timeout_s: float = 30.0
    reuse_port: bool = False  # share the port with the other worker processes of `sluice serve --workers N`

    @property
    def address(self) -> str:
        """``host:port`` as gRPC writes it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

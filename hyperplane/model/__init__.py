"""The pure-Python reference model of the NAT: short, readable, and the oracle the C core
(hyperplane._core) is held against. Same API as hyperplane._core.Nat (docs/semantics.md 8)."""

from .nat import Nat

__all__ = ["Nat"]

"""cnd-fab: find a golden nonce by spreading a double-SHA-256 search over SSH hosts."""

__version__ = "0.1.0"

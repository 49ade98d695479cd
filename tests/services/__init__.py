"""Real services the tests start and stop themselves (loopback only, free ports)."""

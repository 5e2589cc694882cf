"""Tools the agent can run: a registry and the built-in tools."""

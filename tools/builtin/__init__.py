"""The built-in tools, one module each; `tools.build_registry` picks the configured ones."""

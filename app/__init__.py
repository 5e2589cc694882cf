"""cascade: an agentic assistant service in front of an SGLang runtime."""

__version__ = "0.1.0"

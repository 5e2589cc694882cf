"""The agent loop and its prompt building."""

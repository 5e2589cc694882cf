"""cascade's Jinja2 templates, installed as package data: the model's chat template
(`qwen3_6_chat.jinja`), batch prompt templates (`prompts/`) and the batch report."""

from __future__ import annotations

from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent

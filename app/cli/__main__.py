"""`python -m app.cli …`: the `cascade` command."""

from __future__ import annotations

import sys

from app.cli.main import main

sys.exit(main())

"""The `cascade` command line: `main` (argument parsing and the `serve`/`worker` commands),
`batch` (the batch client over the HTTP API), `up` (the homelab supervisor) and `runtime`
(launching SGLang). `python -m app.cli` is the same as `cascade`.

The CLI is a door like `app.api`: it may import every part of cascade, and nothing imports it.
"""

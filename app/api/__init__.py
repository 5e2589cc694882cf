"""HTTP API: the FastAPI app, auth, errors, middleware."""

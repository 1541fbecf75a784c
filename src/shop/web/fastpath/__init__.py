"""The hot routes answered without FastAPI's per-request work, and the uvicorn protocol (with
deadlines) that serves them."""

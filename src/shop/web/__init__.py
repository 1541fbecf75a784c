"""HTTP shared by both services: problem+json, middleware, health and metrics, the app factory, the
fast path."""

"""The e-commerce backend: the product and order services (docs/architecture.md)."""

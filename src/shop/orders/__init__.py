"""The order service: routes, use cases, the pure decision core, the order store port and its SQL,
the consumer loop."""

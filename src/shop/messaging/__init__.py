"""The brokers behind ports: a Broker with a lifecycle, batches in, confirmed messages out; Kafka
and RabbitMQ adapters."""

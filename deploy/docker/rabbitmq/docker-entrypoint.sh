#!/bin/sh
# The official image's entry point name, so that compose can wrap it in either image; RabbitMQ
# reads RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS itself.
set -eu
exec "$@"

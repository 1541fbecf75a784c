#!/bin/bash
# As apache/kafka's entry point: every KAFKA_<NAME> variable becomes the server property <name>
# (lower case, `_` -> `.`, `__` -> `_`, `___` -> `-`), the storage is formatted with CLUSTER_ID
# on first start, then the broker runs in the foreground.
set -euo pipefail
props=/tmp/server.properties
: > "$props"
while IFS='=' read -r name value; do
    case "$name" in
        KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_LOG4J_OPTS) continue ;;
        KAFKA_*) ;;
        *) continue ;;
    esac
    key="${name#KAFKA_}"
    key="${key,,}"
    key="${key//___/-}"
    key="${key//__/@}"
    key="${key//_/.}"
    key="${key//@/_}"
    printf '%s=%s\n' "$key" "$value" >> "$props"
done < <(env)
grep -q '^log.dirs=' "$props" || echo "log.dirs=/var/lib/kafka/data" >> "$props"
kafka-storage.sh format --ignore-formatted --cluster-id "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" \
    --config "$props" > /dev/null
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m}" exec kafka-run-class.sh kafka.Kafka "$props"

#!/bin/sh
# java with Kafka's jars and the console log configuration: kafka-run-class.sh <class> [args]
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties \
    ${KAFKA_OPTS:-} -cp '/opt/kafka/libs/*' "$@"

#!/bin/bash
# docker-compose.yml's Kafka (KRaft, one node), for the official apache/kafka image and the
# local stand-in alike: every KAFKA_<NAME> variable becomes the server property <name> (lower
# case, `_` -> `.`, `__` -> `_`, `___` -> `-`, as the images' own entry points do), then what
# must not be in the container's configuration is added from the files the `secrets` service
# put in /run/shop-secrets:
#   - the broker's certificate and key (PEM inline: Kafka reads a PEM key store file only with
#     an encrypted key) and the CA it trusts as a client of itself;
#   - the JAAS configurations: `admin` (SCRAM-SHA-512, a super user) is the broker's own
#     identity on its listeners; the controller listener takes SASL PLAIN from `controller`
#     only (KRaft cannot check SCRAM there: the credentials live in the metadata log that the
#     controller itself serves).
# On first start the storage is formatted with `admin`'s SCRAM credential; `kafka-access` then
# makes the services' principals and ACLs through it. /tmp/admin.properties is the health
# check's client configuration. Both files are readable by the broker's user only.
set -euo pipefail
umask 077
secrets=/run/shop-secrets
props=/tmp/server.properties
admin_password="$(tr -d '\n' < "$secrets/kafka_admin_password")"
controller_password="$(tr -d '\n' < "$secrets/kafka_controller_password")"
# A PEM file as one property value: its line breaks as `\n`.
inline() { awk 'BEGIN { ORS = "" } NR > 1 { print "\\n" } { print }' "$1"; }
scram="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$admin_password\";"
plain="org.apache.kafka.common.security.plain.PlainLoginModule required username=\"controller\" password=\"$controller_password\" user_controller=\"$controller_password\";"

: > "$props"
while IFS='=' read -r name value; do
    case "$name" in
        KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_LOG4J_OPTS | KAFKA_HOME | KAFKA_VERSION) continue ;;
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
listeners="$(sed -n 's/^listeners=//p' "$props")"
{
    # Every SASL listener but the controller's: SCRAM, the broker itself as `admin`.
    for listener in $(tr ',' '\n' <<< "$listeners" | sed -n 's,^\([A-Za-z_]*\)://.*,\1,p'); do
        [[ "$listener" == CONTROLLER ]] && continue
        echo "listener.name.${listener,,}.scram-sha-512.sasl.jaas.config=$scram"
    done
    echo "listener.name.controller.plain.sasl.jaas.config=$plain"
    echo "ssl.keystore.type=PEM"
    echo "ssl.keystore.certificate.chain=$(inline "$secrets/server.pem")"
    echo "ssl.keystore.key=$(inline "$secrets/server-key.pem")"
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=$secrets/ca.pem"
} >> "$props"
cat > /tmp/admin.properties <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$scram
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/ca.pem
PROPERTIES

export PATH=/opt/kafka/bin:$PATH
if [[ ! -f "$(sed -n 's/^log.dirs=//p' "$props" | cut -d, -f1)/meta.properties" ]]; then
    echo "formatting the storage with the administrator's SCRAM credential"
    kafka-storage.sh format --ignore-formatted --cluster-id "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" \
        --config "$props" --add-scram "SCRAM-SHA-512=[name=admin,password=$admin_password]" > /dev/null
fi
unset admin_password controller_password scram plain
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m}"
if [[ -x /opt/kafka/bin/kafka-server-start.sh ]]; then
    exec kafka-server-start.sh "$props"
fi
exec kafka-run-class.sh kafka.Kafka "$props"

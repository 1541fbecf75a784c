#!/bin/bash
# What the official mysql image's entry point does, for the variables compose uses: on an empty
# data directory, initialise it, set the root password (given, or random with
# MYSQL_RANDOM_ROOT_PASSWORD), create MYSQL_DATABASE and MYSQL_USER with all rights on it, and
# run /docker-entrypoint-initdb.d/*.sh and *.sql against a server that listens on its socket
# only (so the health check passes only once the real server is up). Arguments that start with
# `-` are server options.
set -euo pipefail

file_env() {
    local name="$1" file="${1}_FILE"
    if [[ -n "${!file:-}" ]]; then
        export "$name"="$(< "${!file}")"
    fi
}
literal() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"; }

if [[ "${1:-}" == -* ]]; then
    set -- mariadbd "$@"
fi
if [[ "$1" != mariadbd && "$1" != mysqld ]]; then
    exec "$@"
fi
shift
datadir=/var/lib/mysql
socket=/run/mysqld/mysqld.sock

if [[ ! -d "$datadir/mysql" ]]; then
    file_env MYSQL_ROOT_PASSWORD
    file_env MYSQL_PASSWORD
    if [[ -z "${MYSQL_ROOT_PASSWORD:-}" ]]; then
        if [[ -z "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]]; then
            echo >&2 "error: set MYSQL_ROOT_PASSWORD(_FILE) or MYSQL_RANDOM_ROOT_PASSWORD"
            exit 1
        fi
        MYSQL_ROOT_PASSWORD="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
        export MYSQL_ROOT_PASSWORD
    fi
    echo "initialising the data directory"
    mariadb-install-db --datadir="$datadir" --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve > /dev/null
    mariadbd --datadir="$datadir" --skip-networking --socket="$socket" "$@" &
    pid=$!
    for _ in $(seq 60); do
        mariadb-admin --socket="$socket" --user=root ping --silent 2> /dev/null && break
        sleep 1
    done
    {
        echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(literal "$MYSQL_ROOT_PASSWORD")';"
        echo "DROP USER IF EXISTS 'root'@'$(hostname)', ''@'localhost', ''@'$(hostname)';"
        if [[ -n "${MYSQL_DATABASE:-}" ]]; then
            echo "CREATE DATABASE IF NOT EXISTS \`${MYSQL_DATABASE//\`/\`\`}\`;"
            if [[ -n "${MYSQL_USER:-}" && -n "${MYSQL_PASSWORD:-}" ]]; then
                user="$(literal "$MYSQL_USER")"
                echo "CREATE USER '${user}'@'%' IDENTIFIED BY '$(literal "$MYSQL_PASSWORD")';"
                echo "GRANT ALL ON \`${MYSQL_DATABASE//\`/\`\`}\`.* TO '${user}'@'%';"
            fi
        fi
    } | mariadb --socket="$socket" --user=root
    for init in /docker-entrypoint-initdb.d/*; do
        case "$init" in
            *.sh) echo "running $init"; MYSQL_PWD="$MYSQL_ROOT_PASSWORD" bash "$init" ;;
            *.sql) echo "running $init"; MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mariadb \
                --socket="$socket" --user=root "${MYSQL_DATABASE:-}" < "$init" ;;
        esac
    done
    MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mariadb-admin --socket="$socket" --user=root shutdown
    wait "$pid" || true
    unset MYSQL_ROOT_PASSWORD MYSQL_PASSWORD
    echo "initialised"
fi
exec mariadbd --datadir="$datadir" --socket="$socket" "$@"

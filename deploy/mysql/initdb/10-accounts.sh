#!/bin/bash
# Run once by the MySQL image when it initialises an empty data directory (mounted on
# /docker-entrypoint-initdb.d by docker-compose.yml). MYSQL_USER, the migration account, owns
# the shop database; this adds the services' account, which may only read and write rows. Its
# password is SHOP_DB_PASSWORD, or the content of the file SHOP_DB_PASSWORD_FILE names.
set -euo pipefail

# A SQL string literal's body: backslashes and single quotes escaped.
literal() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"; }

if [[ -n "${SHOP_DB_PASSWORD_FILE:-}" ]]; then
    SHOP_DB_PASSWORD="$(< "$SHOP_DB_PASSWORD_FILE")"
fi
user=$(literal "$SHOP_DB_USER")
password=$(literal "$SHOP_DB_PASSWORD")
database=$(printf '%s' "$MYSQL_DATABASE" | sed -e 's/`/``/g')

MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket --user=root <<SQL
CREATE USER IF NOT EXISTS '${user}'@'%' IDENTIFIED BY '${password}';
GRANT SELECT, INSERT, UPDATE, DELETE ON \`${database}\`.* TO '${user}'@'%';
SQL

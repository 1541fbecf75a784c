#!/bin/bash
# Run once by the MySQL image when it initialises an empty data directory (mounted on
# /docker-entrypoint-initdb.d by docker-compose.yml): the shop's roles and accounts, from the
# same SQL the Helm chart's operators run (deploy/helm/shop/sql/, mounted on /shop-sql): the
# migration account shop_migrate (the schema, WITH GRANT OPTION), and shop_products and
# shop_orders, each holding its service's role and nothing else. Every account REQUIRE SSL.
# `shop migrate` then grants the roles their tables (shop.storage.migrations.RIGHTS).
#
# The passwords are the files the `secrets` service put in this container's volume
# (/run/shop-secrets/db_*_password); the database is MYSQL_DATABASE.
set -euo pipefail
secrets=/run/shop-secrets

if mysql --version | grep -qi mariadb; then
    sql=/shop-sql/mariadb-10.11.sql
else
    sql=/shop-sql/mysql-8.4.sql
fi
password() {
    local value
    value="$(tr -d '\n' < "$secrets/$1")"
    # Generated ones are url-safe base64; anything else would need quoting in SQL and sed.
    [[ "$value" =~ ^[A-Za-z0-9_-]+$ ]] || { echo >&2 "$1: unexpected characters"; exit 1; }
    printf '%s' "$value"
}
database="${MYSQL_DATABASE:-shop}"
[[ "$database" =~ ^[A-Za-z0-9_]+$ ]] || { echo >&2 "MYSQL_DATABASE=$database: not a plain name"; exit 1; }

echo "10-accounts.sh: roles and accounts from $sql for database $database"
sed -e "s/\${MIGRATE_DB_PASSWORD}/$(password db_migrate_password)/g" \
    -e "s/\${PRODUCTS_DB_PASSWORD}/$(password db_products_password)/g" \
    -e "s/\${ORDERS_DB_PASSWORD}/$(password db_orders_password)/g" \
    -e "s/DATABASE IF NOT EXISTS shop /DATABASE IF NOT EXISTS \`$database\` /" \
    -e "s/ ON shop\.\* / ON \`$database\`.* /" \
    "$sql" \
    | MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket --user=root

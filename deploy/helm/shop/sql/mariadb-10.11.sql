-- The shop's roles and accounts on MariaDB 10.11, run once by the database's administrator
-- (and again to change a password: it is idempotent). The MySQL 8.4 version is
-- mysql-8.4.sql; the two differ only in SET DEFAULT ROLE (MariaDB: FOR, MySQL: TO).
--
-- ${...} are the passwords, for example substituted with envsubst (README.md, "MariaDB"):
-- envsubst does not quote, so use passwords without ' or \ (openssl rand -hex 24).
-- The database is DB_NAME (shop); `shop migrate` grants the roles their rights on its tables
-- after every migration (shop.storage.migrations.RIGHTS), so the roles start empty.
-- Every account REQUIRE SSL: a plain connection is refused even with the right password.
-- For a trial without TLS (values.yaml, no tls.*), leave out the REQUIRE SSL clauses.

CREATE DATABASE IF NOT EXISTS shop CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE ROLE IF NOT EXISTS shop_products_rights;
CREATE ROLE IF NOT EXISTS shop_orders_rights;

-- The migration account (the migration Job's DB_MIGRATE_USER): the schema, and the right to pass
-- rights on its tables on to the roles.
CREATE USER IF NOT EXISTS 'shop_migrate'@'%' IDENTIFIED BY '${MIGRATE_DB_PASSWORD}' REQUIRE SSL;
ALTER USER 'shop_migrate'@'%' IDENTIFIED BY '${MIGRATE_DB_PASSWORD}' REQUIRE SSL;
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'shop_migrate'@'%';
GRANT ALL PRIVILEGES ON shop.* TO 'shop_migrate'@'%' WITH GRANT OPTION;

-- The product service (identities.products.dbUser): its role, as its default role, and
-- nothing else.
CREATE USER IF NOT EXISTS 'shop_products'@'%' IDENTIFIED BY '${PRODUCTS_DB_PASSWORD}' REQUIRE SSL;
ALTER USER 'shop_products'@'%' IDENTIFIED BY '${PRODUCTS_DB_PASSWORD}' REQUIRE SSL;
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'shop_products'@'%';
GRANT shop_products_rights TO 'shop_products'@'%';
SET DEFAULT ROLE shop_products_rights FOR 'shop_products'@'%';

-- The order service, its HTTP pods and its consumers (identities.orders.dbUser and
-- identities.consumers.dbUser): its role, as its default role, and nothing else.
CREATE USER IF NOT EXISTS 'shop_orders'@'%' IDENTIFIED BY '${ORDERS_DB_PASSWORD}' REQUIRE SSL;
ALTER USER 'shop_orders'@'%' IDENTIFIED BY '${ORDERS_DB_PASSWORD}' REQUIRE SSL;
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'shop_orders'@'%';
GRANT shop_orders_rights TO 'shop_orders'@'%';
SET DEFAULT ROLE shop_orders_rights FOR 'shop_orders'@'%';

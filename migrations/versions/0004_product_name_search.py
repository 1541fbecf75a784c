"""a FULLTEXT index on products.name, for the name search

`GET /products?name=` read every product (`LIKE '%text%'` cannot use an index), so a search that
matched nothing held a connection for as long as a full scan took. The index finds the products
whose words start with the searched words; the text itself is then checked on those rows only
(`shop.products.repository`). InnoDB FULLTEXT on MariaDB 10.11 and MySQL 8.4 alike.

The index keeps every word, common English words too: InnoDB leaves its default stopwords
("the", "about", "with", ...) out of an index made while `innodb_ft_enable_stopword` is on, and
a search for "The Mug" would then find nothing. The variable is read when the index is made, so
this session turns it off for that statement only. Words shorter than innodb_ft_min_token_size
(3 by default on both servers) are not indexed: the API refuses a search without a longer word.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None

INDEX = "ft_products_name"


def upgrade() -> None:
    op.execute("SET SESSION innodb_ft_enable_stopword = OFF")
    try:
        op.execute(f"ALTER TABLE products ADD FULLTEXT INDEX {INDEX} (name)")
    finally:
        op.execute("SET SESSION innodb_ft_enable_stopword = DEFAULT")


def downgrade() -> None:
    op.drop_index(INDEX, table_name="products")

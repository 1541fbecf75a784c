"""The product service: routes, use cases, the catalogue's rules, the product store port and its
SQL, the page cache."""

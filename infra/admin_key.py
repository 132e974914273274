"""Create (or rotate) the admin API key in a deployed stack's Catalog table and print it once.

    python -m infra.admin_key --table <CatalogTableName> [--key SECRET]

The secret is shown only here; the table keeps its SHA-256 hash.
"""

from __future__ import annotations

import argparse

from core.access import new_secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help="the stack's CatalogTableName output")
    parser.add_argument("--key", help="use this secret instead of a random one (at least 16 characters)")
    args = parser.parse_args()
    secret = args.key or new_secret()
    if len(secret) < 16:
        parser.error("--key must be at least 16 characters")
    from functions.bootstrap import Config, bootstrap

    bootstrap(Config(catalog_table=args.table)).api_keys.ensure_admin(secret)
    print(secret)


if __name__ == "__main__":
    main()

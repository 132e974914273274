"""Create (or rotate) the admin API key in a deployed stack's Catalog table and print it once.

    python -m infra.admin_key --table <CatalogTableName> [--key SECRET]

The secret is shown only here; the table keeps its SHA-256 hash.
"""

from __future__ import annotations

import argparse

from core.access import new_secret
from core.secret_hashes import is_usable_secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help="the stack's CatalogTableName output")
    parser.add_argument(
        "--key", help="use this secret instead of a random one (16 to 200 characters of A-Z, a-z, 0-9, _ and -)"
    )
    args = parser.parse_args()
    secret = args.key or new_secret()
    if not is_usable_secret(secret):
        # The authorizer would refuse it, with the previous admin secret already retired.
        parser.error("--key must be 16 to 200 characters of A-Z, a-z, 0-9, '_' and '-'")
    from core.errors import Conflict
    from functions.bootstrap import Config, bootstrap
    from infra.tables_named import tables_named

    try:
        with tables_named(parser, {"--table": args.table}, "name the stack's CatalogTableName output"):
            bootstrap(Config(catalog_table=args.table)).api_keys.ensure_admin(secret)
    except Conflict as refused:  # another key's secret, or another rotation's record won: this one never works
        parser.exit(1, f"{parser.prog}: error: {refused.message}\n")
    print(secret)


if __name__ == "__main__":
    main()

"""Give each API key issued before per-key usage plans its own API Gateway key in the per-key plan.

    python -m infra.backfill_gateway_keys --catalog-table <CatalogTable's name> --api-id <the REST API's id> \\
        --stage <StageName> --usage-plan <stack name>-per-key

Run once after the deploy that sets KeyRateLimit (README, "Usage plans"), and again after one that
sets it after a deploy had cleared it: until then, keys issued before are metered by the stage's
shared key (and a key whose own gateway key was in the plan that clearing deleted is refused 403).
Each key not revoked without a gateway key of its own is given one; each with one is put in the
plan. A second run gives none twice; a run cut short is finished by the next.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog-table", required=True, help="the stack's Catalog table (its physical name)")
    parser.add_argument("--api-id", required=True, help="the REST API's id (the first label of ApiUrl's host)")
    parser.add_argument("--stage", required=True, help="the API's stage (the StageName parameter)")
    parser.add_argument("--usage-plan", required=True, help="the per-key usage plan's name: <stack name>-per-key")
    args = parser.parse_args(argv)
    from core.ports import ApiStage
    from core.services import ApiKeyService
    from functions.adapters.api_gateway import ApiGatewayKeys
    from functions.adapters.aws_clients import aws_client
    from functions.adapters.dynamodb import DynamoApiKeys
    from infra.tables_named import tables_named

    keys = ApiKeyService(
        DynamoApiKeys(aws_client("dynamodb"), args.catalog_table),
        gateway_keys=ApiGatewayKeys(aws_client("apigateway"), args.usage_plan),
    )
    with tables_named(parser, {"--catalog-table": args.catalog_table}, "name the stack's Catalog table"):
        given, kept, gone = keys.give_gateway_keys(ApiStage(api_id=args.api_id, name=args.stage))
    print(
        f"{given} keys given a gateway key of their own, {kept} already had one (put in the plan), "
        f"{gone} had one deleted (revoked meanwhile, or never stored whole: no secret reaches them)"
    )


if __name__ == "__main__":
    main()

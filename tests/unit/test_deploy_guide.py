"""The README's deploy guide names every parameter and output of template.yaml, and nothing else."""

import re
import shlex
from pathlib import Path

from infra.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
README = (ROOT / "README.md").read_text()
GUIDE = README[README.index("## Deploying to AWS") : README.index("## Tests")]


def _rows(table_header: str) -> list[list[str]]:
    """The cells of each row of the guide's table that starts with `table_header`."""
    table = GUIDE[GUIDE.index(table_header) :].split("\n\n")[0]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in table.splitlines()[2:]]


def _first_column(table_header: str) -> set[str]:
    return {name for row in _rows(table_header) for name in re.findall(r"`([A-Za-z0-9]+)`", row[0])}


def test_every_template_parameter_has_a_row_in_the_deploy_guide():
    assert _first_column("| parameter |") == set(TEMPLATE["Parameters"])


def test_the_deploy_guide_gives_each_parameters_default():
    documented = {row[0].strip("`"): row[1].strip("`") for row in _rows("| parameter |")}
    for name, parameter in TEMPLATE["Parameters"].items():
        default = str(parameter.get("Default", "(required)"))
        assert documented[name] == (default or '""'), name  # an empty default is shown as `""`


def test_every_template_output_is_explained_in_the_deploy_guide():
    assert _first_column("| output |") == set(TEMPLATE["Outputs"])


def test_the_bounds_the_deploy_guide_states_are_the_templates():
    # "at least N", "at most N" and "(A–B" in a parameter's row are its MinValue and MaxValue.
    stated = 0
    for row in _rows("| parameter |"):
        parameter = TEMPLATE["Parameters"][row[0].strip("`")]
        meaning = row[2].replace(",", "")
        for low, high in re.findall(r"\((\d+)–(\d+)", meaning):
            assert (int(low), int(high)) == (parameter.get("MinValue"), parameter.get("MaxValue")), row[0]
            stated += 1
        for low in re.findall(r"at least `?(\d+)`?(?!\d| years)", meaning):
            assert int(low) == parameter.get("MinValue"), row[0]
            stated += 1
        for high in re.findall(r"at most `?(\d+)`?(?!\d| years)", meaning):
            assert int(high) == parameter.get("MaxValue"), row[0]
            stated += 1
    assert stated >= 10


def _tables_named(text: str) -> set[str]:
    return set(re.findall(r"\b([A-Z][a-z]+)\b(?=,| and| tables)", text))


def _tables_recovered() -> set[str]:
    """The tables the PointInTimeRecovery parameter turns recovery on for, without `Table`."""
    return {
        logical_id.removesuffix("Table")
        for logical_id, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == "AWS::DynamoDB::Table" and "PointInTimeRecoverySpecification" in resource["Properties"]
    }


def test_the_point_in_time_recovery_row_names_every_table_the_parameter_turns_it_on_for():
    # Before: the row named the Orders, Inventory and Catalog tables; the Returns table has it too.
    (row,) = [row for row in _rows("| parameter |") if row[0] == "`PointInTimeRecovery`"]
    assert "Orders" in _tables_recovered() and _tables_named(row[2]) == _tables_recovered()


def test_the_point_in_time_recovery_parameter_names_every_table_it_turns_it_on_for():
    # What `sam deploy --guided` and the console show the operator. Before: it named the Orders,
    # Inventory and Catalog tables, as the README's row once did; the Returns table has it too.
    description = TEMPLATE["Parameters"]["PointInTimeRecovery"]["Description"]
    assert _tables_named(description) == _tables_recovered()


def test_the_deploy_guide_gives_each_parameters_allowed_values():
    # A first deploy's operator types these into `sam deploy --guided`: a value the template does
    # not allow fails the deploy. A row lists each allowed value, or names the parameter whose
    # values it shares ("one of `LogRetentionDays`' periods").
    rows = {row[0].strip("`"): " | ".join(row[1:]) for row in _rows("| parameter |")}
    checked = 0
    for name, parameter in TEMPLATE["Parameters"].items():
        allowed = [str(value) for value in parameter.get("AllowedValues", [])]
        if not allowed:
            continue
        row = rows[name]
        shared = [other for other in re.findall(r"one of `(\w+)`' ", row) if other in TEMPLATE["Parameters"]]
        if shared:
            assert [str(value) for value in TEMPLATE["Parameters"][shared[0]]["AllowedValues"]] == allowed, name
        else:
            missing = [value for value in allowed if not re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", row)]
            assert missing == [], name
        checked += 1
    assert checked >= 8


def _labels_in_s3_express() -> str:
    start = GUIDE.index("### Labels in S3 Express One Zone")
    return GUIDE[start : GUIDE.index("\n### ", start + 1)]


def test_the_labels_copy_between_the_two_buckets_is_one_the_aws_cli_runs_on_a_directory_bucket():
    # Before: `aws s3 sync s3://<LabelsExpressBucket>/labels/ s3://<LabelsBucket>/labels/`, which
    # the AWS CLI refuses before any request ("Cannot use sync command with a directory bucket.",
    # v1 since 1.32.25, v2 since 2.15.13): an operator recovering labels after a zone's outage or a
    # switch had nothing to run. Every copy this section asks for has the directory bucket at one end.
    section = _labels_in_s3_express()
    copies = [shlex.split(command) for command in re.findall(r"`(aws s3 [^`]*)`", section)]
    assert [words[2] for words in copies] == ["cp"], copies
    (copy,) = copies
    assert "--recursive" in copy
    assert [word for word in copy if word.startswith("s3://")] == [
        "s3://<LabelsExpressBucket>/labels/",
        "s3://<LabelsBucket>/labels/",
    ]
    assert "aws s3 sync" not in section


def _events_sam_asks_about() -> list[str]:
    """The functions' `Api` events `sam deploy --guided` asks "<function> has no authentication. Is
    this okay?" about (the SAM CLI's samcli/commands/deploy/auth_utils.py): those without `Auth`
    whose API declares none either."""
    resources = TEMPLATE["Resources"]
    asked = []
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for name, event in resource["Properties"].get("Events", {}).items():
            if event["Type"] != "Api" or event["Properties"].get("Auth"):
                continue
            api = resources.get(event["Properties"].get("RestApiId", {}).get("Ref", ""), {})
            if not api.get("Properties", {}).get("Auth"):
                asked.append(f"{logical_id}.{name}")
    return asked


def test_the_first_deployment_says_whether_sam_deploy_guided_asks_about_routes_without_authentication():
    # Before: the guide told the operator to expect a confirmation that the API function has routes
    # without authorization; SAM asks it only of an Api event with no Auth of its own or of its API,
    # and the public routes declare `Authorizer: NONE`: `sam deploy --guided` (SAM CLI 1.170) asked
    # nothing of the kind.
    start = GUIDE.index("### The first deployment")
    section = GUIDE[start : GUIDE.index("\n### ", start + 1)]
    public = [
        f"{logical_id}.{name}"
        for logical_id, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        for name, event in resource["Properties"].get("Events", {}).items()
        if event["Properties"].get("Auth", {}).get("Authorizer") == "NONE"
    ]
    assert public == ["ApiFunction.Health", "ApiFunction.OpenApi", "ApiFunction.Docs"]
    says_none_is_asked = "no `has no authentication. Is this okay?` question" in section
    assert says_none_is_asked == (_events_sam_asks_about() == [])

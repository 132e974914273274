"""A reader copies the README's commands as printed: every shell variable a curl reads is one the
README has set by then, in the Quick start (KEY, ORDER, SHIPMENT, which the other sections say they
reuse) or earlier in the curl's own section, so no step asks for an id it never says how to get."""

from __future__ import annotations

import re

from tests.readme_code import sections, shell_blocks

ASSIGNED = re.compile(r"(?:^|[;\s(])([A-Za-z_]\w*)=(?!=)")
READ = re.compile(r"\$\{?([A-Za-z_]\w*)")


def commands(block: str) -> list[str]:
    """The block's commands, a command continued by a trailing backslash or by a quote left open
    (a JSON body over several lines) read as one; comments dropped."""
    found, pending = [], ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\") or pending.count("'") % 2:
            continue
        found.append(pending)
        pending = ""
    found += [pending] if pending else []
    uncommented = (re.sub(r"(?m)\s#\s.*$", "", command).splitlines() for command in found)
    return ["\n".join(line for line in lines if not line.lstrip().startswith("#")) for lines in uncommented]


def unset_variables() -> list[tuple[str, str, str]]:
    """(section, variable, curl) for each variable a curl reads that nothing set before it."""
    quick_start = next(text for text in sections() if text.startswith("## Quick start"))
    from_quick_start = {
        name for block in shell_blocks(quick_start) for command in commands(block) for name in ASSIGNED.findall(command)
    }
    unset = []
    for text in sections():
        known = set(from_quick_start)
        for block in shell_blocks(text):
            for command in commands(block):
                if re.search(r"\bcurl\b", command):
                    unset += [
                        (text.splitlines()[0], name, command.strip().splitlines()[0])
                        for name in READ.findall(command)
                        if name not in known
                    ]
                known |= set(ASSIGNED.findall(command))
    return unset


def test_the_commands_are_found():
    found = [command for text in sections() for block in shell_blocks(text) for command in commands(block)]
    curls = [command for command in found if "curl" in command]
    assert len(curls) > 80
    assert any("$RMA" in command for command in curls) and any("${H[@]}" in command for command in curls)


def test_every_variable_a_curl_reads_is_set_before_it():
    assert unset_variables() == []

"""Code the README shows, run as written there: what a reader copies is what the tests check."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_verify() -> Any:
    """The `verify` function of the README's "Verify a delivery", exactly as written there."""
    block = re.search(r"<!-- verify-signature -->\n```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert block is not None, "README lost its signature verification example"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)  # the README's own code, run as a receiver would
    return namespace["verify"]


@dataclass(frozen=True)
class CurlRequest:
    """One curl command of the README as an API request: method, path (after the local URL),
    JSON body and the headers it sets besides Authorization and Content-Type."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]


def sections() -> list[str]:
    """The README cut at each ## or ### heading, each part starting with its heading line."""
    return re.split(r"\n(?=#{2,3} )", README.read_text())


def section(title: str) -> str:
    """The README's section headed `title` (## or ###), up to the next heading."""
    return next(text for text in sections() if text.startswith(title + "\n"))


def shell_blocks(text: str) -> list[str]:
    """The bodies of `text`'s sh and bash code blocks."""
    return re.findall(r"```(?:sh|bash)\n(.*?)```", text, flags=re.DOTALL)


def curl_requests(text: str) -> list[CurlRequest]:
    """The curl commands of `text`'s sh blocks, parsed as a shell would split them (a JSON body
    over several lines inside its quotes is one word); one piped or assigned to a variable too."""
    found = []
    for block in shell_blocks(text):
        words = shlex.split(block.replace("\\\n", " "), comments=True)
        for start in (i for i, word in enumerate(words) if word.endswith("curl")):
            method, path, body, headers, i = "GET", None, None, {}, start + 1
            while i < len(words) and words[i] not in ("|", ";") and not words[i].endswith("curl"):
                word = words[i]
                if word == "-X":
                    method, i = words[i + 1], i + 1
                elif word == "-d":
                    body, i = json.loads(words[i + 1]), i + 1
                elif word == "-H":
                    name, _, value = words[i + 1].partition(":")
                    if name not in ("Authorization", "Content-Type"):
                        headers[name] = value.strip()
                    i += 1
                elif word.startswith("http://127.0.0.1:8080"):
                    path = word.removeprefix("http://127.0.0.1:8080")
                i += 1
            if path is not None:
                found.append(CurlRequest(method, path, body, headers))
    return found

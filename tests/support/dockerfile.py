"""The image's Dockerfile read as data: its stages, the final stage's ENV and CMD (the tests start
the API exactly as the image does).
"""

import json
import re
import shlex
from pathlib import Path

from tests.support.paths import DOCKERFILE


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage(path: Path = DOCKERFILE, target: str | None = None) -> list[tuple[str, str]]:
    """The instructions that make a stage (by default the last), with those of the stages it builds on."""
    stages: dict[str, tuple[str, list]] = {}
    current: list = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = []
            stages[name.strip() or f"stage{len(stages)}"] = (base.strip(), current)
        current.append((keyword, rest))
    chain, name = [], target or list(stages)[-1]
    while name in stages:
        base, instructions = stages[name]
        chain = instructions + chain
        name = base
    return chain


def image_env(path: Path = DOCKERFILE, target: str | None = None) -> dict[str, str]:
    """The ``ENV`` variables a stage of the image (by default the last) sets."""
    env = {}
    for keyword, rest in final_stage(path, target):
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_cmd(path: Path = DOCKERFILE) -> list[str]:
    """The image's ``CMD``, in exec form."""
    [cmd] = [rest for keyword, rest in final_stage(path) if keyword == "CMD"]
    return json.loads(cmd)

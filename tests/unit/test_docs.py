"""The README tells the truth: its settings, routes, make targets and CLI commands are the code's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import SecretStr

from flowcraft_core.cli import build_parser
from flowcraft_core.settings import NOT_IN_EXAMPLE, Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Host-level settings the Functions runtime reads itself; they are not ours to document.
HOST_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags"}


def _readme_settings() -> dict[str, str]:
    section = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Za-z_]+)` \| ([^|]*) \|", section, flags=re.M)
    return {name: default.strip().strip("`") for name, default in rows}


def test_readme_settings_table_matches_the_settings_model_and_the_example() -> None:
    documented = _readme_settings()
    aliases = {field.alias for field in Settings.model_fields.values()}
    example = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    assert set(documented) == aliases, "README settings table and flowcraft_core.settings differ"
    assert set(example) - HOST_SETTINGS == aliases - NOT_IN_EXAMPLE, \
        "local.settings.json.example and the settings differ"


def test_readme_defaults_are_the_code_defaults() -> None:
    documented = _readme_settings()
    for name, field in Settings.model_fields.items():
        default = documented[field.alias or name]
        code_default = field.default.get_secret_value() if isinstance(field.default, SecretStr) else field.default
        if default == "—":
            assert code_default in ("", None), f"{field.alias} has a default the README does not show"
            continue
        shown = str(code_default).lower() if isinstance(code_default, bool) else str(code_default)
        if isinstance(code_default, float) and code_default.is_integer():
            shown = str(int(code_default))
        assert default == shown, f"README says {field.alias} defaults to {default!r}, the code to {shown!r}"


def test_readme_routes_exist_in_the_function_app() -> None:
    import function_app
    from scripts.devhost import hosted_functions

    routes = {str(fn.trigger["route"]) for fn in hosted_functions(function_app.app)
              if fn.trigger["type"] == "httpTrigger"}
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", r) + "$") for r in routes]
    mentioned = set(re.findall(r"/api/([A-Za-z0-9_./{}$-]+)", README))
    assert mentioned, "the README should show the HTTP API"
    for path in mentioned:
        concrete = re.sub(r"\$[A-Z]+|\.\.\.", "x", path).rstrip(".")
        assert any(p.match(concrete) for p in patterns), f"README mentions /api/{path}, which no function serves"


def test_readme_make_targets_and_cli_commands_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    for target in set(re.findall(r"`make ([a-z-]+)`", README)):
        assert target in targets, f"README mentions make {target}, which the Makefile lacks"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[union-attr]
    for command in set(re.findall(r"python -m flowcraft_core ([a-z]+)", README)):
        assert command in commands, f"README mentions `python -m flowcraft_core {command}`"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci

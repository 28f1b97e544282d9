"""The `TaskmasterJob` blueprint definition: its kind, its handler, and its schema — a job file and
a placement. Pure.

The server checks a blueprint against the schema before storing it (pkg/core/blueprint.go
ValidateBlueprintAgainstSchema): the required top-level fields, and the JSON type and enum of the
fields it lists, nested objects and array items included. A job-file field that takes more than
one JSON type (`cmd`: text or words, `user`: name or uid…) is listed without a type: the
daemon's own parser (jobfile.py), which gives the errors of a bad job file, has the last word.
Run `python3 -m taskmasterd.colonies.blueprint_schema` to print the definition, for an operator
who adds it without giving the daemon the colony key (`colonies blueprint definition add --spec`).
"""
from __future__ import annotations

import json
from typing import Any

from ..jobfiles.jobfile import ALIASES, FIELDS, RESTART_POLICIES
from ..jobfiles.readiness_spec import ON_UNHEALTHY, READY_MODES

KIND = "TaskmasterJob"
DEFINITION_NAME = "taskmasterjobs"
GROUP, VERSION = "taskmaster.dev", "v1"
RECONCILER_TYPE = "taskmaster-reconciler"  # the handler's executor type, unless a definition says another
RECONCILE, CLEANUP = "reconcile", "cleanup"  # the functions the server's reconciliation processes call

# The fields whose value has one JSON type; the others (in FIELDS or ALIASES) are listed untyped.
_TYPED: dict[str, dict[str, Any]] = {
    "numprocs": {"type": "number"},
    "autostart": {"type": "boolean"},
    "autorestart": {"type": "string", "enum": list(RESTART_POLICIES)},
    "starttime": {"type": "number"},
    "startretries": {"type": "number"},
    "stoptime": {"type": "number"},
    "logmaxbytes": {"type": "number"},
    "logbackups": {"type": "number"},
    "workingdir": {"type": "string"},
    "umask": {"type": "string"},
    "depends_on": {"type": "array"},
    "ready": {"type": "string", "enum": list(READY_MODES)},
    "ready_timeout": {"type": "number"},
    "healthcheck": {"type": "object"},
    "on_unhealthy": {"type": "string", "enum": list(ON_UNHEALTHY)},
    "watchdog": {"type": "number"},
    "procNr": {"type": "number"},
    "autoStart": {"type": "boolean"},
    "restart": {"type": "number"},
    "startTime": {"type": "number"},
    "restartTimes": {"type": "number"},
    "stopTime": {"type": "number"},
    "dir": {"type": "string"},
}


def job_schema() -> dict[str, Any]:
    """The job file as a schema property: every field and alias jobfile.py knows."""
    return {"type": "object", "description": "a taskmaster job file (*.tm.json)",
            "properties": {name: _TYPED.get(name, {}) for name in [*FIELDS, *ALIASES]}}


def spec_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "job": job_schema(),
            "hosts": {"type": "array", "items": {"type": "string"},
                      "description": "host names or shell-style globs (web-*) of the daemons that run the job"},
            "location": {"type": "string", "description": "only the daemons of this colonies.location run it"},
        },
        "required": ["job"],
    }


def definition(colony: str, executortype: str = RECONCILER_TYPE) -> dict[str, Any]:
    """The BlueprintDefinition document (addblueprintdefinitionmsg; colony owner only)."""
    return {
        "kind": "BlueprintDefinition",
        "metadata": {"name": DEFINITION_NAME, "colonyname": colony},
        "spec": {
            "group": GROUP,
            "version": VERSION,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "singular": KIND.lower(), "plural": DEFINITION_NAME},
            "scope": "Namespaced",
            "schema": spec_schema(),
            "handler": {"executorType": executortype, "functionName": RECONCILE},
        },
    }


def handler_of(found: list[Any]) -> tuple[str, str] | None:
    """(executor type, function) of the colony's TaskmasterJob definition, or None when it has none."""
    for item in found:
        if isinstance(item, dict) and (item.get("spec") or {}).get("names", {}).get("kind") == KIND:
            handler = item["spec"].get("handler") or {}
            executortype, function = handler.get("executorType"), handler.get("functionName")
            if isinstance(executortype, str) and executortype and isinstance(function, str) and function:
                return executortype, function
    return None


if __name__ == "__main__":  # pragma: no cover - an operator's tool
    import sys

    print(json.dumps(definition(sys.argv[1] if len(sys.argv) > 1 else "dev"), indent=2))

"""Blueprint definitions and blueprints of the test server, as the real v1.9.12 server has them
(pkg/server/handlers/blueprint/handlers.go, pkg/core/blueprint.go, pkg/database/postgresql/
blueprints.go), and as it was seen doing them on loopback:
- a definition is added by the colony owner only; a second one of the same name is a 500 (the
  database's unique constraint); members and the colony owner read them;
- a blueprint is checked against its definition's schema (ValidateBlueprintAgainstSchema:
  required top-level fields, then type, enum and nested properties of the listed fields) and
  stored as sent: `generation` stays what the client sent (omitted: 0) and goes up by one when an
  update changes the spec; an update stores the status it is sent (none: the status is gone);
- adding one, or an update that changes its spec, queues a reconciliation process for the
  definition's handler (funcname = handler.functionName, executortype = handler.executorType,
  locationname = the blueprint's metadata.locationname, kwargs {kind, blueprintName},
  maxexectime -1, maxretries -1); removing one queues a `cleanup` process; an update by a
  caller that is neither an executor nor a user (the colony owner) queues none;
- updateblueprintstatusmsg (members only) replaces the whole status;
- an empty list of blueprints is `null`, of definitions `[]`.
Not modelled: the kind-wide reconciliation cron the server adds per kind and location (every
60 s, a one-process workflow with kwargs {kind}).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.support.colonies_state import GO_ZERO_TIME, ApiError, _normalize_spec, _obj, _str, random_id

if TYPE_CHECKING:
    from tests.support.colonies_state import ColonyState


def _go_type(value: Any) -> str:
    """What Go's %T says of a value json.Unmarshal made."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return "<nil>"


def _go_value(value: Any) -> str:
    """Go's %v of a JSON value (enough for enum messages)."""
    if isinstance(value, list):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_field(name: str, value: Any, prop: dict[str, Any]) -> None:
    """pkg/core/blueprint.go validateField."""
    kind = prop.get("type")
    wanted = {"string": str, "boolean": bool, "object": dict, "array": list}
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"field '{name}' must be a number, got {_go_type(value)}")
    elif kind in wanted and (not isinstance(value, wanted[kind]) or (kind != "boolean" and isinstance(value, bool))):
        article = "an" if kind in ("object", "array") else "a"
        raise ValueError(f"field '{name}' must be {article} {kind}, got {_go_type(value)}")
    if kind == "array" and isinstance(prop.get("items"), dict):
        for index, item in enumerate(value):
            _check_field(f"{name}[{index}]", item, prop["items"])
    enum = prop.get("enum")
    if enum and value not in enum:
        raise ValueError(f"field '{name}' must be one of {_go_value(enum)}, got {_go_value(value)}")
    if kind == "object" and prop.get("properties"):
        for key, nested in value.items():
            if key in prop["properties"]:
                _check_field(f"{name}.{key}", nested, prop["properties"][key])


def check_against(spec: dict[str, Any], schema: dict[str, Any] | None) -> None:
    """ValidateBlueprintAgainstSchema; raises ValueError with the server's words."""
    if not schema:
        return
    for required in schema.get("required") or []:
        if required not in spec:
            raise ValueError(f"required field '{required}' is missing")
    for key, value in spec.items():
        prop = (schema.get("properties") or {}).get(key)
        if isinstance(prop, dict):
            _check_field(key, value, prop)


def _stored(blueprint: dict[str, Any], blueprintid: str, generation: int) -> dict[str, Any]:
    """The blueprint as the server keeps and sends it back (core.Blueprint's JSON)."""
    metadata = dict(_obj(blueprint, "metadata") or {})
    metadata.update(createdAt=GO_ZERO_TIME, updatedAt=GO_ZERO_TIME, lastReconciliationTime=GO_ZERO_TIME)
    metadata.pop("generation", None)
    if generation:
        metadata["generation"] = generation
    doc: dict[str, Any] = {"blueprintid": blueprintid, "kind": _str(blueprint, "kind"), "metadata": metadata,
                           "spec": _obj(blueprint, "spec") or {}}
    if _obj(blueprint, "status"):
        doc["status"] = blueprint["status"]
    return doc


class Blueprints:
    def __init__(self, state: ColonyState) -> None:
        self._state = state
        self.definitions: dict[tuple[str, str], dict[str, Any]] = {}
        self.blueprints: dict[tuple[str, str], dict[str, Any]] = {}
        self.status_writes = 0  # updateblueprintstatusmsg calls served

    def handlers(self) -> dict[str, tuple[str, Any]]:
        return {
            "addblueprintdefinitionmsg": ("add blueprint definition", self._add_definition),
            "getblueprintdefinitionmsg": ("get blueprint definition", self._get_definition),
            "getblueprintdefinitionsmsg": ("get blueprint definitions", self._get_definitions),
            "removeblueprintdefinitionmsg": ("remove blueprint definition", self._remove_definition),
            "addblueprintmsg": ("add blueprint", self._add),
            "getblueprintmsg": ("get blueprint", self._get),
            "getblueprintsmsg": ("get blueprints", self._get_all),
            "updateblueprintmsg": ("update blueprint", self._update),
            "removeblueprintmsg": ("remove blueprint", self._remove),
            "updateblueprintstatusmsg": ("update blueprint status", self._update_status),
        }

    def _member_or_owner(self, caller: str, colony: str) -> None:
        try:
            self._state._require_member(caller, colony)
        except ApiError:
            self._state._require_colony_owner(caller, colony)

    def _definition_of(self, colony: str, kind: str) -> dict[str, Any] | None:
        return next((d for (c, _), d in sorted(self.definitions.items()) if c == colony
                     and (d["spec"].get("names") or {}).get("kind") == kind), None)

    # --- definitions ----------------------------------------------------------------------------

    async def _add_definition(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        given = _obj(msg, "blueprintdefinition")
        if given is None:
            raise ApiError(400, "Failed to add blueprint definition, blueprint definition is nil")
        metadata = _obj(given, "metadata") or {}
        colony, name = _str(metadata, "colonyname"), _str(metadata, "name")
        self._state._require_colony_owner(caller, colony)
        if (colony, name) in self.definitions:
            raise ApiError(500, 'pq: duplicate key value violates unique constraint '
                                '"prod_blueprintdefinitions_colony_name_name_key"')
        stored = json.loads(json.dumps(given))
        stored["blueprintdefinitionid"] = _str(given, "blueprintdefinitionid") or random_id()
        stored["metadata"] = {**metadata, "createdAt": GO_ZERO_TIME, "updatedAt": GO_ZERO_TIME,
                              "lastReconciliationTime": GO_ZERO_TIME}
        self.definitions[(colony, name)] = stored
        return stored

    def _one(self, table: dict[tuple[str, str], dict[str, Any]], caller: str, colony: str, name: str,
             missing: str) -> dict[str, Any]:
        """A get by name: members and the colony owner; 404 with the server's words."""
        self._member_or_owner(caller, colony)
        found = table.get((colony, name))
        if found is None:
            raise ApiError(404, missing)
        return found

    async def _get_definition(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        return self._one(self.definitions, caller, _str(msg, "colonyname"), _str(msg, "name"),
                         "Blueprint definition not found")

    async def _get_definitions(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colony = _str(msg, "colonyname")
        self._member_or_owner(caller, colony)
        return [d for (c, _), d in sorted(self.definitions.items()) if c == colony]

    async def _remove_definition(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colony, name = _str(msg, "namespace"), _str(msg, "name")
        self._state._require_colony_owner(caller, colony)
        found = self.definitions.get((colony, name))
        if found is None:
            raise ApiError(404, f"BlueprintDefinition '{name}' not found in namespace '{colony}'")
        kind = found["spec"]["names"]["kind"]
        using = [b for (c, _), b in self.blueprints.items() if c == colony and b["kind"] == kind]
        if using:
            raise ApiError(409, f"cannot remove BlueprintDefinition '{name}': {len(using)} blueprint(s) of kind "
                                f"'{kind}' still exist")
        del self.definitions[(colony, name)]
        return {}

    # --- blueprints -----------------------------------------------------------------------------

    def _checked(self, given: dict[str, Any], colony: str) -> dict[str, Any]:
        kind = _str(given, "kind")
        if not kind:
            raise ApiError(400, "blueprint kind is required")
        found = self._definition_of(colony, kind)
        if found is None:
            raise ApiError(400, f"BlueprintDefinition for kind '{kind}' not found in namespace '{colony}'")
        try:
            check_against(_obj(given, "spec") or {}, found["spec"].get("schema"))
        except ValueError as exc:
            raise ApiError(400, f"blueprint validation failed: {exc}") from None
        return found

    def _reconcile(self, caller: str, blueprint: dict[str, Any], definition: dict[str, Any], funcname: str,
                   initiatorname: str) -> None:
        """The process of createImmediateReconciliationProcess (or the cleanup one)."""
        handler = definition["spec"].get("handler") or {}
        executortype = handler.get("executorType", "")
        function = funcname or handler.get("functionName", "")
        if not executortype or not function:
            return
        metadata = blueprint["metadata"]
        conditions: dict[str, Any] = {"colonyname": metadata["colonyname"], "executortype": executortype}
        if metadata.get("locationname"):
            conditions["locationname"] = metadata["locationname"]
        spec = _normalize_spec({"nodename": f"{executortype}-{function}", "funcname": function,
                                "kwargs": {"kind": blueprint["kind"], "blueprintName": metadata["name"]},
                                "maxexectime": -1, "maxretries": -1, "conditions": conditions})
        self._state._enqueue(spec, caller, initiatorname)

    def _initiator(self, caller: str, colony: str) -> str | None:
        """resolveInitiator: an executor's or a user's name; None for anyone else (the colony owner)."""
        executor = self._state._executor_by_id(caller)
        if executor is not None:
            return executor["executorname"]
        user = self._state.users.get(colony, {}).get(caller)
        return user["name"] if user else None

    def _sent(self, caller: str, msg: dict[str, Any], verb: str) -> tuple[dict[str, Any], str, str]:
        """The blueprint an add or an update sends, its colony and name; members and the colony owner."""
        given = _obj(msg, "blueprint")
        if given is None:
            raise ApiError(400, f"Failed to {verb} blueprint, blueprint is nil")
        metadata = _obj(given, "metadata") or {}
        colony, name = _str(metadata, "colonyname"), _str(metadata, "name")
        self._member_or_owner(caller, colony)
        return given, colony, name

    async def _add(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        given, colony, name = self._sent(caller, msg, "add")
        metadata = _obj(given, "metadata") or {}
        definition = self._checked(given, colony)
        if (colony, name) in self.blueprints:
            raise ApiError(409, f"blueprint with name '{name}' already exists in colony '{colony}'")
        generation = metadata.get("generation") if isinstance(metadata.get("generation"), int) else 0
        stored = _stored(given, _str(given, "blueprintid") or random_id(), generation)
        self.blueprints[(colony, name)] = stored
        self._reconcile(caller, stored, definition, "", self._initiator(caller, colony) or "")
        return stored

    async def _get(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        return self._one(self.blueprints, caller, _str(msg, "namespace"), _str(msg, "name"), "Blueprint not found")

    async def _get_all(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colony, kind, location = _str(msg, "namespace"), _str(msg, "kind"), _str(msg, "locationname")
        self._member_or_owner(caller, colony)
        found = [b for (c, _), b in sorted(self.blueprints.items()) if c == colony and (not kind or b["kind"] == kind)
                 and (not (kind and location) or (b["metadata"].get("locationname") or "").lower() == location.lower())]
        return found or None

    async def _update(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        given, colony, name = self._sent(caller, msg, "update")
        old = self.blueprints.get((colony, name))
        if old is None:
            raise ApiError(404, f"blueprint '{name}' not found in namespace '{colony}'")
        definition = self._checked(given, colony)
        changed = (_obj(given, "spec") or {}) != old["spec"] or bool(msg.get("forcegeneration"))
        generation = old["metadata"].get("generation", 0) + changed
        stored = _stored(given, old["blueprintid"], generation)
        self.blueprints[(colony, name)] = stored
        initiator = self._initiator(caller, colony)
        if changed and initiator is not None:
            self._reconcile(caller, stored, definition, "", initiator)
        return stored

    async def _remove(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colony, name = _str(msg, "namespace"), _str(msg, "name")
        self._member_or_owner(caller, colony)
        found = self.blueprints.pop((colony, name), None)
        if found is None:
            raise ApiError(404, "Blueprint not found")
        definition = self._definition_of(colony, found["kind"])
        if definition is not None:
            self._reconcile(caller, found, definition, "cleanup", self._initiator(caller, colony) or "")
        return {}

    async def _update_status(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colony = _str(msg, "colonyname")
        self._state._require_member(caller, colony)
        found = self.blueprints.get((colony, _str(msg, "blueprintname")))
        if found is None:
            raise ApiError(404, "Blueprint not found")
        status = _obj(msg, "status")
        if status:
            found["status"] = status
        else:
            found.pop("status", None)
        self.status_writes += 1
        return {}

"""In-memory ColonyOS state and RPC handlers for the test server (reference.md §2).

Handlers take the caller id recovered from the signature and the decoded payload,
and either return the reply payload or raise ApiError(status, message) with the
status codes and messages the real v1.9.12 server uses (wire-samples.json).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from taskmasterd.colonies.crypto import sha3_256_hex
from tests.support.colonies_units import QuantityError, available, cpu_millis, memory_bytes

WAITING, RUNNING, SUCCESS, FAILED, CANCELLED = range(5)
PENDING, APPROVED, REJECTED, UNREGISTERED = range(4)
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
NO_PROCESS_MESSAGE = "No process available for assignment"
MAX_LOG_COUNT = 500
MAX_PROCESS_COUNT = 100
MAX_PRIORITY = 50000
_NS = 1_000_000_000
_NS_PER_DAY = 86400 * _NS

Handler = Callable[[str, dict[str, Any], "asyncio.Future[Any] | None"], Awaitable[Any]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BadJSON(Exception):
    """A payload field of the wrong type: Go's json.Unmarshal would have failed."""


def go_time(ns: int | None) -> str:
    """RFC3339Nano in UTC like Go's time.Time JSON; the zero time when unset."""
    if ns is None:
        return GO_ZERO_TIME
    seconds, frac = divmod(ns, _NS)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def go_time_ns(text: str) -> int:
    """The inverse of go_time (UTC "Z" times only), every digit kept."""
    whole, _, frac = text.rstrip("Z").partition(".")
    seconds = int(datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    return seconds * _NS + int((frac + "000000000")[:9])


def random_id() -> str:
    return sha3_256_hex(str(uuid.uuid4()))


def _int(msg: dict[str, Any], key: str, default: int = 0) -> int:
    value = msg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadJSON(key)
    return int(value)


def _str(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadJSON(key)
    return value


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = msg.get(key)
    if value is not None and not isinstance(value, dict):
        raise BadJSON(key)
    return value


def _list(msg: dict[str, Any], key: str) -> list[Any] | None:
    value = msg.get(key)
    if value is not None and not isinstance(value, list):
        raise BadJSON(key)
    return value


def _normalize_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The FunctionSpec as the server echoes it: Go zero values and normalized units."""
    cond = _obj(spec, "conditions") or {}
    gpu = _obj(cond, "gpu") or {}
    fs = _obj(spec, "fs") or {}
    conditions: dict[str, Any] = {
        "colonyname": _str(cond, "colonyname"),
        "executornames": _list(cond, "executornames"),
        "executortype": _str(cond, "executortype"),
        "dependencies": _list(cond, "dependencies") or [],
        "nodes": _int(cond, "nodes"),
        "cpu": _str(cond, "cpu") or "0m",
        "processes": _int(cond, "processes"),
        "processespernode": _int(cond, "processespernode"),
        "mem": _str(cond, "mem") or "0Mi",
        "storage": _str(cond, "storage") or "0Mi",
        "gpu": {
            "name": _str(gpu, "name"),
            "mem": _str(gpu, "mem") or "0Mi",
            "count": _int(gpu, "count"),
            "nodecount": _int(gpu, "nodecount"),
        },
        "walltime": _int(cond, "walltime"),
    }
    if _str(cond, "locationname"):
        conditions["locationname"] = cond["locationname"]
    normalized: dict[str, Any] = {
        "nodename": _str(spec, "nodename"),
        "funcname": _str(spec, "funcname"),
        "args": _list(spec, "args") or [],
        "kwargs": _obj(spec, "kwargs") or {},
        "priority": _int(spec, "priority"),
        "maxwaittime": _int(spec, "maxwaittime"),
        "maxexectime": _int(spec, "maxexectime"),
        "maxretries": _int(spec, "maxretries"),
        "conditions": conditions,
        "label": _str(spec, "label"),
        "fs": {"mount": _str(fs, "mount"), "snapshots": _list(fs, "snapshots"), "dirs": _list(fs, "dirs")},
        "env": _obj(spec, "env") or {},
    }
    if _list(spec, "channels"):
        normalized["channels"] = spec["channels"]
    return normalized


@dataclass
class _Process:
    doc: dict[str, Any]
    submitted: int  # unix ns
    cpu: int  # millicores, as AddProcess stores conditions.cpu
    mem: int  # bytes
    wait_deadline: int | None = None
    exec_deadline: int | None = None

    @property
    def colony(self) -> str:
        return self.doc["spec"]["conditions"]["colonyname"]

    @property
    def state(self) -> int:
        return self.doc["state"]

    def set_state(self, state: int, now: int | None = None) -> None:
        self.doc["state"] = state
        for attribute in self.doc["attributes"]:
            attribute["state"] = state
        if now is not None:
            self.doc["endtime"] = go_time(now)


class ColonyState:
    """Colonies, executors, users, functions, processes and logs of one server."""

    def __init__(self, server_id: str, allow_reregister: bool = True,
                 stale_executor_duration: float | None = None) -> None:
        self.server_id = server_id
        self.allow_reregister = allow_reregister
        # COLONIES_STALE_EXECUTOR_DURATION (the real default is 600 s); None: never.
        self.stale_executor_duration = stale_executor_duration
        self._heard: dict[str, int] = {}  # executorid -> unix ns of its last assign (MarkAlive)
        self.stale_removals: collections.Counter[str] = collections.Counter()  # executorid -> times removed
        self.held_assigns: collections.Counter[str] = collections.Counter()  # executorid -> long-polls waiting
        self.colonies: dict[str, dict[str, Any]] = {}
        self.executors: dict[tuple[str, str], dict[str, Any]] = {}
        self.users: dict[str, dict[str, dict[str, Any]]] = {}
        self.functions: list[dict[str, Any]] = []
        self.processes: dict[str, _Process] = {}
        self.logs: list[dict[str, Any]] = []
        self._last_log_ns = 0
        self._changed = asyncio.Event()
        # executortype -> assign long-polls waiting, oldest first: (their location, what wakes them)
        self._assign_waiters: dict[str, list[tuple[str, asyncio.Future[None]]]] = {}
        # msgtype -> (what Go says it failed to do, handler)
        self.handlers: dict[str, tuple[str, Handler]] = {
            "addcolonymsg": ("add colony", self._add_colony),
            "getcoloniesmsg": ("get colonies", self._get_colonies),
            "getcolonymsg": ("get colony", self._get_colony),
            "addusermsg": ("add user", self._add_user),
            "addexecutormsg": ("add executor", self._add_executor),
            "approveexecutormsg": ("approve executor", self._approve_executor),
            "rejectexecutormsg": ("reject executor", self._reject_executor),
            "removeexecutormsg": ("remove executor", self._remove_executor),
            "getexecutormsg": ("get executor", self._get_executor),
            "getexecutorsmsg": ("get executors", self._get_executors),
            "addexecutorlogmsg": ("add executor log", self._add_executor_log),
            "addfunctionmsg": ("add function", self._add_function),
            "getfunctionsmsg": ("get function", self._get_functions),
            "submitfuncspecmsg": ("submit process spec", self._submit),
            "assignprocessmsg": ("assign process", self._assign),
            "getprocessmsg": ("get process", self._get_process),
            "getprocessesmsg": ("get processes", self._get_processes),
            "getprocesshistmsg": ("get process hist", self._get_process_hist),
            "closesuccessfulmsg": ("close process as successful", self._close_successful),
            "closefailedmsg": ("close process as failed", self._close_failed),
            "setoutputmsg": ("set output", self._set_output),
            "addlogmsg": ("add log", self._add_log),
            "getlogsmsg": ("get logs", self._get_logs),
            "cancelprocessmsg": ("cancel process", self._cancel),
            "removeprocessmsg": ("remove process", self._remove_process),
        }
        from tests.support.colonies_blueprints import Blueprints  # it builds on this module

        self.blueprints = Blueprints(self)
        self.handlers.update(self.blueprints.handlers())

    # ------------------------------------------------------------------ change notification

    def _notify(self) -> None:
        # Waiters hold the previous event; swapping wakes all of them at once.
        self._changed.set()
        self._changed = asyncio.Event()

    def _signal_waiting(self, process: _Process) -> None:
        """backends/gin/eventhandler.go sendSignal: a process now WAITING wakes exactly one assign
        long-poll of its type (a located process: one at its location or at none)."""
        location = process.doc["spec"]["conditions"].get("locationname", "")
        waiters = self._assign_waiters.get(process.doc["spec"]["conditions"]["executortype"], [])
        for waiter_location, woken in waiters:
            if not woken.done() and (not location or waiter_location in ("", location)):
                woken.set_result(None)
                return

    async def _wait_signal(self, executor: dict[str, Any], seconds: float, gone: asyncio.Future[Any] | None) -> bool:
        """Wait to be signalled up to ``seconds``; False when the client went away."""
        woken = asyncio.get_running_loop().create_future()
        entry = (executor.get("locationname", ""), woken)
        waiters = self._assign_waiters.setdefault(executor["executortype"], [])
        waiters.append(entry)
        try:
            await asyncio.wait({woken} if gone is None else {woken, gone}, timeout=max(seconds, 0),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiters.remove(entry)
            woken.cancel()
        return gone is None or not gone.done()

    async def _wait_change(self, changed: asyncio.Event, seconds: float, gone: asyncio.Future[Any] | None) -> bool:
        """Wait for ``changed`` up to ``seconds``; False when the client went away."""
        waiter = asyncio.ensure_future(changed.wait())
        watched = {waiter} if gone is None else {waiter, gone}
        try:
            await asyncio.wait(watched, timeout=max(seconds, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        return gone is None or not gone.done()

    # ------------------------------------------------------------------ roles

    def _require_server_owner(self, caller: str) -> None:
        if caller != self.server_id:
            raise ApiError(403, "Access denied, not server owner")

    def _colony(self, name: str, status: int = 403) -> dict[str, Any]:
        if name not in self.colonies:
            raise ApiError(status, f"Colony with name <{name}> does not exists")
        return self.colonies[name]

    def _require_colony_owner(self, caller: str, colonyname: str) -> None:
        if self._colony(colonyname)["colonyid"] != caller:
            raise ApiError(403, "Access denied, not colony owner")

    def _executor_by_id(self, executorid: str) -> dict[str, Any] | None:
        return next((e for e in self.executors.values() if e["executorid"] == executorid), None)

    def _require_member(self, caller: str, colonyname: str, approved: bool = True) -> None:
        # Executor first, then user; the colony owner is neither (§2.3).
        executor = self._executor_by_id(caller)
        if executor and executor["colonyname"] == colonyname:
            if not approved or executor["state"] == APPROVED:
                return
        self._colony(colonyname)
        if caller not in self.users.get(colonyname, {}):
            raise ApiError(403, f"Access denied, not a member of Colony with name <{colonyname}>")

    def _named_executor(self, msg: dict[str, Any], action: str) -> dict[str, Any]:
        executor = self.executors.get((_str(msg, "colonyname"), _str(msg, "executorname")))
        if executor is None:
            raise ApiError(500, f"Failed to {action}, executor is nil")
        return executor

    # ------------------------------------------------------------------ colonies and users

    async def _add_colony(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        self._require_server_owner(caller)
        colony = _obj(msg, "colony")
        if colony is None:
            raise ApiError(400, "Failed to add colony, colony is <nil>")
        colonyid, name = _str(colony, "colonyid"), _str(colony, "name")
        if len(colonyid) != 64:
            raise ApiError(400, "Failed to add colony, invalid colony Id length")
        if name in self.colonies:
            raise ApiError(400, f"A Colony with name <{name}> already exists")
        self.colonies[name] = {"colonyid": colonyid, "name": name}
        return self.colonies[name]

    async def _get_colonies(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        self._require_server_owner(caller)
        return list(self.colonies.values()) or None

    async def _get_colony(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        name = _str(msg, "colonyname")
        self._require_member(caller, name)
        return self.colonies[name]

    async def _add_user(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        user = _obj(msg, "user")
        if user is None:
            raise ApiError(400, "Failed to add user, executor is nil")
        colonyname, userid, name = _str(user, "colonyname"), _str(user, "userid"), _str(user, "name")
        self._colony(colonyname, status=400)
        self._require_colony_owner(caller, colonyname)
        users = self.users.setdefault(colonyname, {})
        if any(u["name"] == name for u in users.values()):
            raise ApiError(400, f"A user with name <{name}> already exists in Colony with name <{colonyname}>")
        if userid in users:
            raise ApiError(400, f"A user with Id <{userid}> already exists in Colony with name <{colonyname}>")
        users[userid] = {
            "colonyname": colonyname,
            "userid": userid,
            "name": name,
            "email": _str(user, "email"),
            "phone": _str(user, "phone"),
        }
        return users[userid]

    # ------------------------------------------------------------------ executors

    async def _add_executor(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        given = _obj(msg, "executor")
        if given is None:
            raise ApiError(400, "Failed to add executor, executor is nil")
        colonyname, name = _str(given, "colonyname"), _str(given, "executorname")
        executorid = _str(given, "executorid")
        self._require_colony_owner(caller, colonyname)
        old = self.executors.get((colonyname, name))
        if old is not None:
            # handlers/executor HandleAddExecutor: a known name, even UNREGISTERED, is refused unless
            # re-registration is allowed; then the old one is removed (its processes requeued) and replaced.
            if not self.allow_reregister:
                raise ApiError(400, f"Executor with name <{name}> in Colony <{colonyname}> already exists")
            self._unregister(old)
            self._heard.pop(old["executorid"], None)
            del self.executors[(colonyname, name)]
        if self._executor_by_id(executorid) is not None:
            raise ApiError(400, f"Failed to add executor, executor with Id <{executorid}> already exists")
        executor: dict[str, Any] = {
            "executorid": executorid,
            "executortype": _str(given, "executortype"),
            "executorname": name,
            "colonyname": colonyname,
            "state": PENDING,
            "requirefuncreg": bool(given.get("requirefuncreg", False)),
            "commissiontime": go_time(time.time_ns()),
            "lastheardfromtime": GO_ZERO_TIME,
            "capabilities": {"hardware": None, "software": None, **(_obj(given, "capabilities") or {})},
            "allocations": {"projects": None, **(_obj(given, "allocations") or {})},
        }
        if _str(given, "locationname"):
            executor["locationname"] = given["locationname"]
        self.executors[(colonyname, name)] = executor
        return executor

    async def _set_executor_state(self, caller: str, msg: dict[str, Any], state: int, action: str) -> Any:
        # By name, whatever the state: approving an UNREGISTERED executor restores it, same id
        # (postgresql/executors.go ApproveExecutor sets STATE=1 by EXECUTOR_ID).
        self._require_colony_owner(caller, _str(msg, "colonyname"))
        executor = self._named_executor(msg, action)
        if state == UNREGISTERED:
            self._unregister(executor)
        else:
            executor["state"] = state
        return {}

    def _unregister(self, executor: dict[str, Any]) -> None:
        """postgresql/executors.go RemoveExecutorByName: the row stays, UNREGISTERED; its RUNNING
        processes go back to the queue as they were submitted (no retry counted); its functions go."""
        executor["state"] = UNREGISTERED
        for process in self.processes.values():
            if process.state == RUNNING and process.doc["assignedexecutorid"] == executor["executorid"]:
                process.doc.update(isassigned=False, starttime=GO_ZERO_TIME, endtime=GO_ZERO_TIME,
                                   assignedexecutorid="", state=WAITING)
        self._drop_functions(executor["colonyname"], executor["executorname"])
        self._notify()

    def remove_stale_executors(self) -> None:
        """controllers/colonies_controller_worker.go cleanupStaleExecutors: every executor that is not
        UNREGISTERED, has been heard from (an assign) and not for the stale duration, is removed."""
        if self.stale_executor_duration is None:
            return
        oldest = time.time_ns() - int(self.stale_executor_duration * _NS)
        for executor in self.executors.values():
            heard = self._heard.get(executor["executorid"])
            if executor["state"] != UNREGISTERED and heard is not None and heard < oldest:
                self.stale_removals[executor["executorid"]] += 1
                self._unregister(executor)

    async def _approve_executor(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        return await self._set_executor_state(caller, msg, APPROVED, "approve executor")

    async def _reject_executor(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        return await self._set_executor_state(caller, msg, REJECTED, "reject executor")

    async def _remove_executor(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        return await self._set_executor_state(caller, msg, UNREGISTERED, "remove executor")

    async def _get_executor(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        self._require_member(caller, _str(msg, "colonyname"))
        return self._named_executor(msg, "get executor")

    async def _get_executors(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colonyname = _str(msg, "colonyname")
        self._require_member(caller, colonyname, approved=False)
        return [e for e in self.executors.values() if e["colonyname"] == colonyname] or None

    # ------------------------------------------------------------------ functions

    def _drop_functions(self, colonyname: str, executorname: str) -> None:
        self.functions = [
            f for f in self.functions if (f["colonyname"], f["executorname"]) != (colonyname, executorname)
        ]

    async def _add_function(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        fun = _obj(msg, "fun")
        if fun is None:
            raise ApiError(400, "Failed to add function, msg.Function is nil")
        colonyname, executorname = _str(fun, "colonyname"), _str(fun, "executorname")
        self._require_member(caller, colonyname)
        executor = self.executors.get((colonyname, executorname))
        if executor is None:
            raise ApiError(400, f"Failed to add function, Executor with name <{executorname}> does not exist")
        if executor["executorid"] != caller:
            raise ApiError(403, "Not allowed to add a function to another executor")
        function: dict[str, Any] = {
            "functionid": _str(fun, "functionid") or random_id(),
            "executorname": executorname,
            "executortype": _str(fun, "executortype"),
            "colonyname": colonyname,
            "funcname": _str(fun, "funcname"),
        }
        if _str(fun, "description"):
            function["description"] = fun["description"]
        if _list(fun, "args"):
            function["args"] = fun["args"]
        for stat in ("counter", "minwaittime", "maxwaittime", "minexectime", "maxexectime", "avgwaittime", "avgexectime"):
            function[stat] = 0
        self.functions.append(function)
        return function

    async def _get_functions(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colonyname, executorname = _str(msg, "colonyname"), _str(msg, "executorname")
        self._require_member(caller, colonyname)
        found = [
            f
            for f in self.functions
            if f["colonyname"] == colonyname and (not executorname or f["executorname"] == executorname)
        ]
        return found or None

    # ------------------------------------------------------------------ processes

    def _initiator_name(self, caller: str, colonyname: str) -> str:
        executor = self._executor_by_id(caller)
        if executor is not None:
            return executor["executorname"]
        return self.users[colonyname][caller]["name"]

    async def _submit(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        given = _obj(msg, "spec")
        if given is None:
            raise ApiError(400, "Failed to submit process spec, msg.FunctionSpec is nil")
        spec = _normalize_spec(given)
        colonyname = spec["conditions"]["colonyname"]
        self._require_member(caller, colonyname)
        if not -MAX_PRIORITY <= spec["priority"] <= MAX_PRIORITY:
            raise ApiError(
                400, f"Failed to submit function spec, priority outside range [-{MAX_PRIORITY}, {MAX_PRIORITY}]"
            )
        conditions = spec["conditions"]
        try:
            cpu, mem = cpu_millis(conditions["cpu"]), memory_bytes(conditions["mem"])
        except QuantityError as exc:
            raise ApiError(400, str(exc)) from None
        return self._enqueue(spec, caller, self._initiator_name(caller, colonyname), cpu, mem)

    def _enqueue(self, spec: dict[str, Any], caller: str, initiatorname: str, cpu: int = 0, mem: int = 0) -> dict[str, Any]:
        """A new WAITING process of a normalized spec (controllers AddProcess), and the signal."""
        colonyname = spec["conditions"]["colonyname"]
        now = time.time_ns()
        processid = random_id()
        wait_deadline = now + spec["maxwaittime"] * _NS if spec["maxwaittime"] > 0 else None
        attributes = [
            {
                "attributeid": random_id(),
                "targetid": processid,
                "targetcolonyname": colonyname,
                "targetprocessgraphid": "",
                "state": WAITING,
                "attributetype": 3,
                "key": key,
                "value": value,
            }
            for key, value in spec["env"].items()
        ]
        doc = {
            "processid": processid,
            "initiatorid": caller,
            "initiatorname": initiatorname,
            "assignedexecutorid": "",
            "isassigned": False,
            "state": WAITING,
            "prioritytime": now - spec["priority"] * _NS_PER_DAY,
            "submissiontime": go_time(now),
            "starttime": GO_ZERO_TIME,
            "endtime": GO_ZERO_TIME,
            "waitdeadline": go_time(wait_deadline),
            "execdeadline": GO_ZERO_TIME,
            "retries": 0,
            "attributes": attributes,
            "spec": spec,
            "waitforparents": False,
            "parents": [],
            "children": [],
            "processgraphid": "",
            "in": [],
            "out": [],
            "errors": [],
        }
        self.processes[processid] = _Process(doc, now, cpu, mem, wait_deadline=wait_deadline)
        self._notify()
        self._signal_waiting(self.processes[processid])
        return doc

    def _matches(self, process: _Process, executor: dict[str, Any], cpu: int, mem: int) -> bool:
        """postgresql/processes.go SelectAndAssign's WHERE clause."""
        conditions = process.doc["spec"]["conditions"]
        names = conditions["executornames"] or []
        location = conditions.get("locationname", "")
        return (
            process.state == WAITING
            and not process.doc["waitforparents"]
            and process.colony == executor["colonyname"]
            and conditions["executortype"] == executor["executortype"]
            and (not names or names == ["*"] or executor["executorname"] in names)
            and process.cpu <= cpu
            and process.mem <= mem
            and (not location or location.lower() == executor.get("locationname", "").lower())
        )

    def _try_assign(self, executor: dict[str, Any], cpu: int, mem: int) -> dict[str, Any] | None:
        candidates = [p for p in self.processes.values() if self._matches(p, executor, cpu, mem)]
        if not candidates:
            return None
        process = min(candidates, key=lambda p: p.doc["prioritytime"])
        now = time.time_ns()
        maxexectime = process.doc["spec"]["maxexectime"]
        process.exec_deadline = now + maxexectime * _NS if maxexectime > 0 else None
        process.doc.update(
            assignedexecutorid=executor["executorid"],
            isassigned=True,
            starttime=go_time(now),
            execdeadline=go_time(process.exec_deadline),
        )
        process.set_state(RUNNING)
        self._notify()
        return process.doc

    async def _assign(self, caller: str, msg: dict[str, Any], gone: asyncio.Future[Any] | None) -> Any:
        colonyname = _str(msg, "colonyname")
        self._require_member(caller, colonyname)
        timeout = _int(msg, "timeout")
        if timeout == 0:
            raise ApiError(400, "Invalid timeout value, timeout cannot be zero")
        executor = self._executor_by_id(caller)
        if executor is None:
            raise ApiError(500, "Failed to assign process, executor not found")
        try:
            cpu = available(_str(msg, "availablecpu"), cpu_millis)
            mem = available(_str(msg, "availablemem"), memory_bytes)
        except QuantityError as exc:
            raise ApiError(400, str(exc)) from None
        deadline = time.monotonic() + timeout
        while True:
            # Every try of the long-poll marks the executor alive (DistributedAssign's MarkAlive).
            now = time.time_ns()
            executor["lastheardfromtime"] = go_time(now)
            self._heard[executor["executorid"]] = now
            assigned = self._try_assign(executor, cpu, mem)
            if assigned is not None:
                return assigned
            remaining = deadline - time.monotonic()
            if timeout < 0 or remaining <= 0:
                raise ApiError(404, NO_PROCESS_MESSAGE)
            self.held_assigns[caller] += 1
            try:
                listening = await self._wait_signal(executor, remaining, gone)
            finally:
                self.held_assigns[caller] -= 1
            if not listening:
                raise ApiError(404, NO_PROCESS_MESSAGE)  # nobody is listening any more

    def _process(self, caller: str, msg: dict[str, Any], action: str) -> _Process:
        process = self.processes.get(_str(msg, "processid"))
        if process is None:
            raise ApiError(500, f"Failed to {action}, process is nil")
        self._require_member(caller, process.colony)
        return process

    async def _get_process(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        if _str(msg, "processid") not in self.processes:
            raise ApiError(404, "Failed to get process, process not found")
        return self._process(caller, msg, "get process").doc

    async def _get_processes(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colonyname = _str(msg, "colonyname")
        self._require_member(caller, colonyname)
        count, state = _int(msg, "count"), _int(msg, "state")
        if count > MAX_PROCESS_COUNT:
            raise ApiError(400, f"Count is larger than MaxCount limit <{MAX_PROCESS_COUNT}>")
        if state not in (WAITING, RUNNING, SUCCESS, FAILED, CANCELLED):
            raise ApiError(400, "Failed to get processes, invalid msg.State")
        wanted = {
            "executortype": _str(msg, "executortype"),
            "label": _str(msg, "label"),
            "initiatorname": _str(msg, "initiator"),
        }
        found = [
            p.doc
            for p in self.processes.values()
            if p.colony == colonyname
            and p.state == state
            and (not wanted["executortype"] or p.doc["spec"]["conditions"]["executortype"] == wanted["executortype"])
            and (not wanted["label"] or p.doc["spec"]["label"] == wanted["label"])
            and (not wanted["initiatorname"] or p.doc["initiatorname"] == wanted["initiatorname"])
        ]
        found.sort(key=lambda d: d["prioritytime"])
        return found[:count] or None

    async def _get_process_hist(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        """handlers/process HandleGetProcessHist -> postgresql FindProcessesByExecutorID (or
        FindProcessesByColonyName without an executorid): every process in `state` submitted in the
        last `seconds`, oldest first, no count limit. (The real server sends no reply at all to a
        non-member; this one answers 403.)"""
        colonyname, executorid = _str(msg, "colonyname"), _str(msg, "executorid")
        self._require_member(caller, colonyname)
        since = time.time_ns() - _int(msg, "seconds") * _NS
        state = _int(msg, "state")
        found = [
            p for p in self.processes.values()
            if p.colony == colonyname and p.state == state and p.submitted >= since
            and (not executorid or p.doc["assignedexecutorid"] == executorid)
        ]
        return [p.doc for p in sorted(found, key=lambda p: p.submitted)] or None

    def _assigned_process(self, caller: str, msg: dict[str, Any], verb: str) -> _Process:
        action = f"close process as {verb}"
        process = self._process(caller, msg, action)
        if not process.doc["assignedexecutorid"]:
            raise ApiError(403, f"Failed to {action}, process is not assigned")
        if process.doc["assignedexecutorid"] != caller:
            raise ApiError(403, f"Failed to {action}, not allowed to {action}")
        return process

    def _end(self, process: _Process, state: int) -> dict[str, Any]:
        process.set_state(state, time.time_ns())
        self._notify()
        return {}

    async def _close_successful(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        process = self._assigned_process(caller, msg, "successful")
        refused = {FAILED: "failed", CANCELLED: "cancelled"}
        if process.state in refused:
            raise ApiError(400, f"Tried to set {refused[process.state]} process as successful")
        if process.state == WAITING:
            raise ApiError(400, "Tried to set waiting process as successful without being running")
        out = _list(msg, "out")
        if out:
            process.doc["out"] = out
        return self._end(process, SUCCESS)

    async def _close_failed(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        process = self._assigned_process(caller, msg, "failed")
        refused = {SUCCESS: "successful", FAILED: "failed", CANCELLED: "cancelled"}
        if process.state in refused:
            raise ApiError(400, f"Tried to set {refused[process.state]} process as failed")
        process.doc["errors"] = _list(msg, "errors") or []
        return self._end(process, FAILED)

    async def _set_output(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        process = self._process(caller, msg, "set output")
        if process.doc["assignedexecutorid"] != caller:
            # Go reuses the close message here.
            raise ApiError(403, "Failed to close process as successful, not allowed to close process as successful")
        if process.state != RUNNING:
            raise ApiError(403, "Failed to set output, process is not running")
        out = _list(msg, "out")
        if out:
            process.doc["out"] = out
        return {}

    async def _cancel(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        process = self._process(caller, msg, "cancel process")
        refused = {SUCCESS: "successful", FAILED: "failed", CANCELLED: "already cancelled"}
        if process.state in refused:
            raise ApiError(400, f"Tried to cancel {refused[process.state]} process")
        return self._end(process, CANCELLED)

    async def _remove_process(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        process = self._process(caller, msg, "remove process")
        if process.state == RUNNING:
            raise ApiError(400, "Failed to remove process, cannot remove a running process")
        del self.processes[process.doc["processid"]]
        self._notify()
        return {}

    def check_deadlines(self) -> None:
        """The server's timeout loop (§2.8), including the maxexectime 0 trap."""
        now = time.time_ns()
        for process in self.processes.values():
            spec = process.doc["spec"]
            if process.state == RUNNING and spec["maxexectime"] != -1:
                if process.exec_deadline is not None and now <= process.exec_deadline:
                    continue
                if spec["maxretries"] != -1 and process.doc["retries"] >= spec["maxretries"]:
                    process.doc["errors"] = ["Maximum execution time limit exceeded"]
                    process.set_state(FAILED, now)
                else:
                    process.doc.update(assignedexecutorid="", isassigned=False, retries=process.doc["retries"] + 1)
                    process.set_state(WAITING, now)
                    self._signal_waiting(process)  # UnassignExecutor signals; RemoveExecutorByName does not
                self._notify()
            elif process.state == WAITING and process.wait_deadline is not None and now > process.wait_deadline:
                process.doc["errors"] = ["Maximum waiting time limit exceeded"]
                process.set_state(FAILED, now)
                self._notify()

    # ------------------------------------------------------------------ logs

    def _append_log(self, processid: str, colonyname: str, executorname: str, message: str) -> None:
        # Strictly increasing timestamps keep "since" (exclusive) paging exact.
        self._last_log_ns = max(time.time_ns(), self._last_log_ns + 1)
        self.logs.append(
            {
                "processid": processid,
                "colonyname": colonyname,
                "executorname": executorname,
                "message": message,
                "timestamp": self._last_log_ns,
            }
        )

    async def _add_log(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        process = self._process(caller, msg, "add log")
        if process.state != RUNNING:
            raise ApiError(403, "Failed to set output, process is not running")
        if process.doc["assignedexecutorid"] != caller:
            raise ApiError(403, "Failed to add log, not allowed to add log, only the assigned Executor may att logs")
        executor = self._executor_by_id(caller)
        assert executor is not None  # the assigned executor exists
        self._append_log(process.doc["processid"], process.colony, executor["executorname"], _str(msg, "message"))
        return {}

    async def _add_executor_log(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colonyname = _str(msg, "colonyname")
        self._require_member(caller, colonyname)
        executor = self._executor_by_id(caller)
        if executor is None:
            raise ApiError(403, "Failed to add executor log, executor not found")
        if executor["executorname"] != _str(msg, "executorname"):
            raise ApiError(403, "Failed to add executor log, executor name mismatch")
        self._append_log("", colonyname, executor["executorname"], _str(msg, "message"))
        return {}

    async def _get_logs(self, caller: str, msg: dict[str, Any], gone: Any) -> Any:
        colonyname, executorname = _str(msg, "colonyname"), _str(msg, "executorname")
        processid = _str(msg, "processid")
        if executorname:
            if (colonyname, executorname) not in self.executors:
                raise ApiError(500, "Failed to get logs, executor does not exist")
            self._require_member(caller, colonyname)
            selected = [x for x in self.logs if (x["colonyname"], x["executorname"]) == (colonyname, executorname)]
        else:
            process = self.processes.get(processid)
            if process is None:
                raise ApiError(500, "Failed to get logs, process does not exist")
            self._require_member(caller, process.colony)
            selected = [x for x in self.logs if x["processid"] == processid]
        count, since = _int(msg, "count"), _int(msg, "since")
        if count > MAX_LOG_COUNT:
            raise ApiError(403, f"Count exceeds max log count ({MAX_LOG_COUNT})")
        if msg.get("latest"):
            selected = selected[-count:] if count > 0 else []
        else:
            selected = [x for x in selected if x["timestamp"] > since][:count]
        return selected or None

    # ------------------------------------------------------------------ pub/sub

    async def wait_for_state(self, caller: str, msg: dict[str, Any], gone: asyncio.Future[Any] | None) -> Any:
        """subscribeprocessmsg: the process once it is in ``state``; None at the timeout."""
        process = self._process(caller, msg, "subscribe process")
        state, timeout = _int(msg, "state"), _int(msg, "timeout")
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            if process.state == state:
                return process.doc
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._wait_change(changed, remaining, gone):
                return None

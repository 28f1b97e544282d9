"""Dependencies between jobs, as pure logic: conditions, what a job waits on, cycles, stop order."""
from taskmasterd.jobfiles.cycles import cycle_problem, dependency_graph, describe_cycle, find_cycle
from taskmasterd.lifecycle.dependencies import Standing, conditions_met, stop_layers, unmet, waiting_text
from taskmasterd.jobfiles.jobfile import parse_job
from taskmasterd.jobfiles.readiness_spec import Dependency

UP = Standing(running=True, healthy=True, completed=False)
UP_UNHEALTHY = Standing(running=True, healthy=False, completed=False)
DONE = Standing(running=False, healthy=False, completed=True)
DOWN = Standing(running=False, healthy=False, completed=False)


def test_a_job_meets_a_condition_when_every_instance_does():
    assert conditions_met([UP, UP]) == {"running", "healthy"}
    assert conditions_met([UP, UP_UNHEALTHY]) == {"running"}
    assert conditions_met([UP, DOWN]) == set()
    assert conditions_met([DONE, DONE]) == {"completed"}
    assert conditions_met([]) == set()


def test_what_a_job_still_waits_on():
    known = {"db": frozenset({"running"}), "setup": frozenset({"completed"})}
    deps = (Dependency("db", "healthy"), Dependency("cache"), Dependency("setup", "completed"), Dependency("db"))
    assert unmet(deps, known.get) == [Dependency("db", "healthy"), Dependency("cache")]
    assert waiting_text(deps, known.get) == "waiting for db (healthy), cache (not loaded)"
    assert waiting_text(deps[2:], known.get) is None
    assert waiting_text((), known.get) is None


def test_cycles_are_found_and_named():
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ("a", "b", "a")
    assert describe_cycle(find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]})) == "a -> b -> c -> a"
    assert find_cycle({"a": ["a"]}) == ("a", "a")
    assert find_cycle({"web": ["db", "cache"], "db": [], "cache": ["db"], "x": ["not-loaded"]}) is None


def test_a_cycle_through_a_changed_job_is_found_from_it():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"]}
    assert find_cycle(graph, start="b") == ("b", "c", "a", "b")
    assert find_cycle({"a": ["b"], "b": [], "c": ["c"]}, start="a") is None  # c is not reached from a
    assert find_cycle(graph, start="unknown") is None


def test_a_job_file_closing_a_cycle_gets_the_message_naming_it():
    files = {"web": '["db"]', "db": '["cache"]', "cache": '[{"job": "web", "condition": "healthy"}]'}
    specs = [parse_job(name, f'{{"cmd": "x", "depends_on": {deps}}}'.encode(), f"jobs/{name}.tm.json")
             for name, deps in files.items()]
    graph = dependency_graph(specs)
    assert graph == {"web": ["db"], "db": ["cache"], "cache": ["web"]}
    assert cycle_problem(graph, "cache", "jobs/cache.tm.json") == (
        'jobs/cache.tm.json: field "depends_on": a cycle: cache -> web -> db -> cache')
    assert cycle_problem(dependency_graph(specs[:2]), "db", "jobs/db.tm.json") is None


def test_a_long_chain_does_not_exhaust_the_stack():
    chain = {f"j{i}": [f"j{i + 1}"] for i in range(20000)}
    assert find_cycle(chain) is None
    chain["j20000"] = ["j0"]
    assert len(find_cycle(chain)) == 20002


def test_stop_order_puts_dependants_first_and_parallels_the_independent():
    graph = {"workers": ["web"], "web": ["db", "cache"], "cache": [], "db": [], "batch": [], "report": ["db"]}
    assert stop_layers(graph, graph) == [["batch", "report", "workers"], ["web"], ["cache", "db"]]


def test_stop_order_counts_only_the_jobs_being_stopped():
    graph = {"workers": ["web"], "web": ["db"], "db": []}
    assert stop_layers(["workers", "db"], graph) == [["db", "workers"]]
    assert stop_layers([], graph) == []


def test_stop_order_survives_a_cycle():
    assert stop_layers(["a", "b", "c"], {"a": ["b"], "b": ["a"], "c": ["a"]}) == [["c"], ["a", "b"]]

"""The sweep spec: a W&B-shaped YAML file, parsed and validated into a `SweepSpec`. Ray-free.

Every problem found is reported at once, one line each (`key: what is allowed`), so a user fixes a
spec in one pass. A valid spec expands into *points* (the searched config values) and seeds; every
point runs once per seed, and each (point, seed) is one Tune trial.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator import UserError
from trainers.config import FIELD_NAMES, PRESETS, ConfigError, TrainConfig, coerce, resolve
from trainers.metrics import EVENTS, METRICS

METHODS = ("grid", "random", "optuna")
SAMPLERS = ("tpe", "gp", "cmaes", "random", "nsga2")
GOALS = ("minimize", "maximize")
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values")
OBJECTIVE = "objective"  # the metric the search sees: never missing, censored runs at their penalty
TOP_KEYS = ("name", "description", "base", "method", "metric", "parameters", "seeds", "max_concurrent",
            "resources", "max_failures", "num_samples", "sampler", "search_seed", "prune", "checkpoint_every",
            "checkpoint_every_s", "report_every_s", "pack", "keep_checkpoints", "budget", "batched")
KEEP_CHECKPOINTS = ("none", "censored", "all")
BUDGET_UNTIL = ("median_known",)
BATCHED = ("auto", "on", "off")  # auto: a pack's jobs of one batching key train as one batched model on a GPU
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
MAX_GRID_TRIALS = 100_000
# A spec is a few hundred bytes; these bound what a hostile one can cost before it is refused (< 2 s).
MAX_SPEC_BYTES = 256 * 1024
MAX_SPEC_DEPTH = 20  # mappings and lists inside one another
MAX_SPEC_NODES = 100_000  # values, counting each use of an alias (a YAML "billion laughs" expands here)


class SpecLoader(yaml.SafeLoader):
    """PyYAML with YAML 1.2 core-schema scalars: `1e-3` is a number (PyYAML's YAML 1.1 reads it as a
    string), only true/false are booleans (not yes/no/on/off), integers are decimal. `.nan` and `.inf`
    read as floats and are refused where numbers belong, naming the key."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":bool", ":int", ":float"))]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
SpecLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node), 10))
SpecLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: float(
    loader.construct_scalar(node).lower().replace(".inf", "inf").replace(".nan", "nan")))


def did_you_mean(word: str, known: Any) -> str:
    """` (did you mean 'weight_decay'?)` for a near miss, else ''."""
    import difflib

    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml(text: str, source: str = "spec") -> Any:
    """Parse a spec's YAML within the limits above; UserError (one line) when it is over one."""
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise UserError(f"{source}: the spec is {len(text.encode())} bytes; at most {MAX_SPEC_BYTES} "
                        "(a sweep spec is a short YAML mapping)")
    depth = deepest = 0
    for char in text:  # flow collections ([[[...) nested past the limit: refused before the parser recurses
        depth += (char in "[{") - (char in "]}")
        deepest = max(deepest, depth)
    if deepest > MAX_SPEC_DEPTH:
        raise UserError(f"{source}: nested more than {MAX_SPEC_DEPTH} levels deep")
    loader = SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except RecursionError:
        raise UserError(f"{source}: nested more than {MAX_SPEC_DEPTH} levels deep") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{source}: not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def _check_size(root: yaml.Node, source: str) -> None:
    """Walk the node graph as construction would (aliases expanded) and stop at the limits."""
    count, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_SPEC_NODES:
            raise UserError(f"{source}: more than {MAX_SPEC_NODES} values once aliases are expanded (an alias "
                            "bomb?); write the spec out plainly")
        if depth > MAX_SPEC_DEPTH:
            raise UserError(f"{source}: nested more than {MAX_SPEC_DEPTH} levels deep")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)


@dataclass(frozen=True)
class Metric:
    name: str  # an event (trainers.metrics.EVENTS) or a final metric (METRICS)
    goal: str  # minimize | maximize

    @property
    def mode(self) -> str:  # Tune's word for the goal
        return "min" if self.goal == "minimize" else "max"


@dataclass(frozen=True)
class Param:
    """One searched field. kind: values | value | uniform | int_uniform | log_uniform_values."""

    name: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Budget:
    """Censoring-aware budgets (orchestrator.budgets): every job starts at `max_steps`; then, round by round,
    the censored jobs of configurations whose Kaplan-Meier median is not yet known get twice the budget
    (the last round capped at `extend_to`), until every median is known or `extend_to` is reached."""

    max_steps: int
    extend_to: int
    until: str = "median_known"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: dict[str, Any]  # config fields (and optionally `preset`) shared by every trial
    method: str
    metrics: tuple[Metric, ...]
    parameters: dict[str, Param]
    seeds: tuple[int, ...] = (0,)
    max_concurrent: int = 2
    cpu: float = 1.0
    gpu: float = 0.0
    max_failures: int = 2
    num_samples: int | None = None  # random/optuna: configurations to try (each once per seed)
    sampler: str | None = None  # optuna only
    search_seed: int = 0  # makes random points and the Optuna sampler reproducible
    prune_not_memorized_by: int | None = None  # end a trial whose train_acc is still < 0.99 at this step
    checkpoint_every: int = 10  # evaluations between trial checkpoints (one is always kept: the last)
    checkpoint_every_s: float = 10.0  # ... and at least this many seconds: each one costs Tune ~20 ms
    report_every_s: float = 1.0  # longest a trial's evaluations wait to reach Tune; 0: report every evaluation
    pack: int | None = None  # jobs per Tune trial; None: the rule in orchestrator.jobs
    keep_checkpoints: str = "censored"  # none | censored | all: which ended jobs keep their final checkpoint
    budget: Budget | None = None  # censoring-aware budgets; None: every job has its config's max_steps
    batched: str = "auto"  # auto | on | off: batched models on a GPU trial | also on CPU | never
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)  # the spec as given

    @property
    def spec_hash(self) -> str:
        """sha256 of the spec as run (its keys as given, under the sweep's name; canonical JSON): the
        `spec_hash` of every trial row, so a row says which spec produced it."""
        import hashlib
        import json

        text = json.dumps({**self.raw, "name": self.name}, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def n_jobs(self) -> int:
        """Jobs the sweep owes: every configuration once per seed (each one row in `trials`)."""
        n_points = len(points(self)) if self.method != "optuna" else self.num_samples or 0
        return n_points * len(self.seeds)

    @property
    def n_trials(self) -> int:  # the name used before jobs were packed into Tune trials: rows, i.e. jobs
        return self.n_jobs

    def search_metric_keys(self) -> list[str]:
        """The reported keys the search optimises: `objective`, or one `objective_<name>` per metric."""
        if not self.multi_objective:
            return [OBJECTIVE]
        return [f"{OBJECTIVE}_{m.name}" for m in self.metrics]

    def trial_config(self, point: dict[str, Any], seed: int) -> TrainConfig:
        return resolve({**self.base, **point, "seed": seed})


# --- the objective the search sees ---

def penalty(max_steps: int) -> float:
    """What a censored run scores: twice its budget, so it is never mistaken for a success."""
    return 2.0 * max_steps


def objective_value(metric: Metric, events: dict[str, int | None], metrics: dict[str, float],
                    max_steps: int) -> float:
    """An event's step, or the penalty when it has not happened (yet); a metric's latest value."""
    if metric.name in EVENTS:
        value = events.get(metric.name)
        return float(value) if value is not None else penalty(max_steps)
    return float(metrics[metric.name])


def objectives(spec: SweepSpec, events: dict[str, int | None], metrics: dict[str, float],
               max_steps: int) -> dict[str, float]:
    """Every search key of `spec` with its value (reported at every evaluation)."""
    values = [objective_value(m, events, metrics, max_steps) for m in spec.metrics]
    out = {OBJECTIVE: values[0]}
    if spec.multi_objective:
        out.update(dict(zip(spec.search_metric_keys(), values, strict=True)))
    return out


# --- expansion into points ---

def points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The searched values of each configuration, in run order (grid: the full product; random: sampled
    with `search_seed`). Optuna proposes its points while it runs: here only the constants."""
    constants = {p.name: p.values[0] for p in spec.parameters.values() if p.kind == "value"}
    if spec.method == "grid":
        names = [p.name for p in spec.parameters.values() if p.kind == "values"]
        grids = [spec.parameters[n].values for n in names]
        return [{**constants, **dict(zip(names, combo, strict=True))} for combo in itertools.product(*grids)]
    if spec.method == "random":
        rng = random.Random(spec.search_seed)
        return [{**constants, **{p.name: _sample(p, rng) for p in spec.parameters.values() if p.kind != "value"}}
                for _ in range(spec.num_samples or 0)]
    return [constants]


def _sample(param: Param, rng: random.Random) -> Any:
    if param.kind == "values":
        return rng.choice(param.values)
    if param.kind == "int_uniform":
        return rng.randint(int(param.low), int(param.high))
    if param.kind == "log_uniform_values":
        value = math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    else:
        value = rng.uniform(param.low, param.high)
    return coerce(param.name, float(f"{value:.6g}"))  # readable values in tables and logs


def trial_train_config(spec: SweepSpec, tune_config: dict[str, Any],
                       all_points: list[dict[str, Any]]) -> TrainConfig:
    """The TrainConfig of one Tune trial. Grid/random trials carry the index of their point; Optuna trials
    carry the searched values. `threads` left null becomes the trial's whole-CPU count (Ray sets
    OMP_NUM_THREADS=1 in its workers, which would leave a multi-CPU trial on one thread)."""
    if "point" in tune_config:
        point = all_points[int(tune_config["point"])]
    else:
        point = {**all_points[0], **{k: v for k, v in tune_config.items() if k in spec.parameters}}
    config = spec.trial_config(point, int(tune_config["seed"]))
    if config.threads is None:
        config = dataclasses.replace(config, threads=max(1, int(spec.cpu)))
    return config


def optuna_space(spec: SweepSpec) -> dict[str, Any]:
    """The searched parameters as Optuna distributions (constants stay out: they go into every config)."""
    import optuna.distributions as od

    space: dict[str, Any] = {}
    for p in spec.parameters.values():
        if p.kind == "values":
            space[p.name] = od.CategoricalDistribution(list(p.values))
        elif p.kind == "int_uniform":
            space[p.name] = od.IntDistribution(int(p.low), int(p.high))
        elif p.kind in ("uniform", "log_uniform_values"):
            space[p.name] = od.FloatDistribution(float(p.low), float(p.high), log=p.kind == "log_uniform_values")
    return space


# --- parsing and validation ---

def load_spec(path: str | Path, name: str | None = None) -> SweepSpec:
    """Read and validate a spec file; `name` overrides the spec's own. UserError lists every problem."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:  # refused before reading it
            raise UserError(f"{path}: the spec is {path.stat().st_size} bytes; at most {MAX_SPEC_BYTES} "
                            "(a sweep spec is a short YAML mapping)")
        raw = load_yaml(path.read_text(), str(path))
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"spec file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a sweep spec is YAML)") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a sweep spec is a YAML mapping (name, base, method, parameters, ...)")
    if name is not None:
        raw = {**raw, "name": name}
    return parse_spec(raw, source=str(path))


def parse_spec(raw: dict[str, Any], source: str = "spec") -> SweepSpec:
    problems: list[str] = []
    spec = _parse(raw, problems)
    if problems or spec is None:
        precise = {p.split(".values[", 1)[0] for p in problems if ".values[" in p.split(":", 1)[0]}
        problems = [p for p in problems if p.split(":", 1)[0] not in precise]  # one line per key: the precise one
        lines = "\n".join(f"  {p}" for p in dict.fromkeys(problems))
        raise UserError(f"invalid sweep spec {source} ({len(problems)} problem(s)):\n{lines}")
    return spec


def _int(raw: dict, key: str, default: Any, problems: list[str], minimum: int) -> Any:
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{key}: must be an integer >= {minimum}, got {value!r}")
        return default
    return value


def _seconds(raw: dict, key: str, default: float, problems: list[str], hint: str = "") -> float:
    value = raw.get(key, default)
    if not _finite(value) or value < 0:
        problems.append(f"{key}: a number of seconds >= 0{hint}, got {value!r}")
        return default
    return float(value)


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _check_numbers(raw: dict[str, Any], problems: list[str]) -> None:
    """Where a config field takes a number, the spec must give a finite number: not a boolean, not a
    string (`--set` on the command line parses strings; a spec is typed YAML), not .nan or .inf."""
    import typing

    def check(where: str, field_name: str, value: Any) -> None:
        if field_name not in FIELD_NAMES:
            return
        hint = typing.get_type_hints(TrainConfig)[field_name]
        kinds = set(typing.get_args(hint)) or {hint}
        if not kinds & {int, float} or (value is None and type(None) in kinds):
            return
        if not _finite(value):
            problems.append(f"{where}: a finite number, got {value!r}")

    base = raw.get("base")
    if isinstance(base, dict):
        for key, value in base.items():
            check(f"base.{key}", key, value)
    parameters = raw.get("parameters")
    for name, body in parameters.items() if isinstance(parameters, dict) else ():
        if not isinstance(body, dict):
            continue
        for key in ("value", "min", "max"):
            if key in body:
                check(f"parameters.{name}.{key}", name, body[key])
        if isinstance(body.get("values"), list):
            for i, value in enumerate(body["values"]):
                check(f"parameters.{name}.values[{i}]", name, value)


def _parse(raw: dict[str, Any], problems: list[str]) -> SweepSpec | None:
    _check_numbers(raw, problems)
    for key in raw:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown spec key{did_you_mean(key, TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}")

    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.append(f"name: required; letters, digits, '_', '.', '-' (at most 80), got {name!r}")

    method = raw.get("method", "grid")
    if method not in METHODS:
        problems.append(f"method: {method!r} is not allowed; choose one of {', '.join(METHODS)}")

    base = raw.get("base", {}) or {}
    if not isinstance(base, dict):
        problems.append("base: must be a mapping of config fields (and optionally preset)")
        base = {}
    for key in base:
        if key != "preset" and key not in FIELD_NAMES:
            problems.append(f"base.{key}: unknown config field{did_you_mean(key, FIELD_NAMES)}; known: preset, "
                            f"{', '.join(FIELD_NAMES)}")
    if "seed" in base:
        problems.append("base.seed: seeds are set by the top-level `seeds` list, never in base")
    if "preset" in base and base["preset"] not in PRESETS:
        problems.append(f"base.preset: unknown preset {base['preset']!r}; choose one of {', '.join(PRESETS)}")

    metrics = _parse_metrics(raw.get("metric", {"name": "steps_to_generalize", "goal": "minimize"}), problems)
    parameters = _parse_parameters(raw.get("parameters", {}), method, problems)

    seeds = raw.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        problems.append(f"seeds: a non-empty list of integers >= 0, got {seeds!r}")
        seeds = [0]
    elif len(set(seeds)) != len(seeds):
        problems.append(f"seeds: each seed at most once, got {seeds!r}")

    resources = raw.get("resources", {}) or {}
    if not isinstance(resources, dict):
        problems.append("resources: a mapping like {cpu: 1, gpu: 0}")
        resources = {}
    for key in resources:
        if key not in ("cpu", "gpu"):
            problems.append(f"resources.{key}: unknown resource; allowed: cpu, gpu")
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    if not _finite(cpu) or cpu <= 0:
        problems.append(f"resources.cpu: a number > 0 (fractions allowed), got {cpu!r}")
        cpu = 1
    if not _finite(gpu) or gpu < 0:
        problems.append(f"resources.gpu: a number >= 0 (fractions allowed), got {gpu!r}")
        gpu = 0

    max_concurrent = _int(raw, "max_concurrent", 2, problems, 1)
    max_failures = _int(raw, "max_failures", 2, problems, 0)
    search_seed = _int(raw, "search_seed", 0, problems, 0)
    checkpoint_every = _int(raw, "checkpoint_every", 10, problems, 1)
    checkpoint_every_s = _seconds(raw, "checkpoint_every_s", 10.0, problems)
    report_every_s = _seconds(raw, "report_every_s", 1.0, problems, " (0: every evaluation)")
    num_samples = _int(raw, "num_samples", None, problems, 1)
    pack = _int(raw, "pack", None, problems, 1)
    if method == "optuna" and pack is not None:
        problems.append("pack: optuna packs are one proposed configuration x its seeds; remove `pack`")
    keep_checkpoints = raw.get("keep_checkpoints", "censored")
    if keep_checkpoints not in KEEP_CHECKPOINTS:
        problems.append(f"keep_checkpoints: {keep_checkpoints!r} is not allowed; choose one of "
                        f"{', '.join(KEEP_CHECKPOINTS)}")
    batched = raw.get("batched", "auto")
    if isinstance(batched, bool):  # YAML 1.1 reads a bare on / off as true / false
        batched = "on" if batched else "off"
    if batched not in BATCHED:
        problems.append(f"batched: {batched!r} is not allowed; choose one of {', '.join(BATCHED)}")
    if method == "grid" and num_samples is not None:
        problems.append("num_samples: belongs to random/optuna; grid runs the full product of `values`")
    if method in ("random", "optuna") and num_samples is None:
        problems.append(f"num_samples: required for method {method} (configurations to try, each once per seed)")

    sampler = raw.get("sampler")
    if sampler is not None and method != "optuna":
        problems.append(f"sampler: only for method optuna, got method {method!r}")
    if method == "optuna":
        if sampler is None:
            sampler = "nsga2" if len(metrics) > 1 else "tpe"
        if sampler not in SAMPLERS:
            problems.append(f"sampler: {sampler!r} is not allowed; choose one of {', '.join(SAMPLERS)}")
        if len(metrics) > 1 and sampler in ("cmaes", "gp"):
            problems.append(f"sampler: {sampler} is single-objective; for a list of metrics use nsga2, tpe or random")
        if not any(p.kind != "value" for p in parameters.values()):
            problems.append("parameters: optuna needs at least one searched parameter (not only `value`)")

    prune = raw.get("prune", {}) or {}
    prune_by = None
    if not isinstance(prune, dict) or set(prune) - {"not_memorized_by"}:
        problems.append("prune: a mapping {not_memorized_by: STEP} (end trials not memorised by STEP)")
    else:
        prune_by = _int(prune, "not_memorized_by", None, problems, 1)

    budget = _parse_budget(raw.get("budget"), method, base, parameters, keep_checkpoints, problems)
    if budget is not None:
        base = {**base, "max_steps": budget.max_steps}

    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append("description: free text")
        description = ""

    if problems:
        return None
    spec = SweepSpec(
        name=name, base=dict(base), method=method, metrics=tuple(metrics), parameters=parameters,
        seeds=tuple(seeds), max_concurrent=max_concurrent, cpu=float(cpu), gpu=float(gpu),
        max_failures=max_failures, num_samples=num_samples, sampler=sampler, search_seed=search_seed,
        prune_not_memorized_by=prune_by, checkpoint_every=checkpoint_every,
        checkpoint_every_s=checkpoint_every_s, report_every_s=report_every_s, pack=pack,
        keep_checkpoints=keep_checkpoints, budget=budget, batched=batched, description=description, raw=raw,
    )
    _check_configs(spec, problems)
    return None if problems else spec


def _parse_budget(value: Any, method: str, base: dict[str, Any], parameters: dict[str, Param],
                  keep_checkpoints: Any, problems: list[str]) -> Budget | None:
    if value is None:
        return None
    shape = "budget: a mapping {max_steps: N, extend_to: M, until: median_known} with M > N"
    if not isinstance(value, dict) or set(value) - {"max_steps", "extend_to", "until"}:
        problems.append(shape)
        return None
    before = len(problems)
    max_steps = _int(value, "max_steps", None, problems, 1)
    extend_to = _int(value, "extend_to", None, problems, 1)
    until = value.get("until", "median_known")
    if max_steps is None or extend_to is None:
        problems.append(shape)
    elif extend_to <= max_steps:
        problems.append(f"budget.extend_to: must be above budget.max_steps ({max_steps}), got {extend_to}")
    if until not in BUDGET_UNTIL:
        problems.append(f"budget.until: {until!r} is not allowed; choose one of {', '.join(BUDGET_UNTIL)}")
    if method == "optuna":
        problems.append("budget: grid and random sweeps only (a COMPLETE Optuna trial's value cannot change); "
                        "remove `budget` or use method grid")
    if "max_steps" in base or "max_steps" in parameters:
        where = "base.max_steps" if "max_steps" in base else "parameters.max_steps"
        problems.append(f"{where}: the budget sets max_steps (budget.max_steps); remove {where}")
    if keep_checkpoints == "none":
        problems.append("keep_checkpoints: none leaves nothing to extend; with `budget` use censored (the default)")
    if len(problems) > before:
        return None
    return Budget(max_steps=max_steps, extend_to=extend_to, until=until)


def _parse_metrics(value: Any, problems: list[str]) -> list[Metric]:
    items = value if isinstance(value, list) else [value]
    allowed = (*EVENTS, *METRICS)
    metrics = []
    for i, item in enumerate(items):
        where = f"metric[{i}]" if isinstance(value, list) else "metric"
        if not isinstance(item, dict) or set(item) - {"name", "goal"}:
            problems.append(f"{where}: a mapping {{name, goal}} (or a list of them for multi-objective)")
            continue
        metric_name, goal = item.get("name"), item.get("goal", "minimize")
        if metric_name not in allowed:
            problems.append(f"{where}.name: {metric_name!r} is not a metric; choose one of {', '.join(allowed)}")
        if goal not in GOALS:
            problems.append(f"{where}.goal: {goal!r} is not allowed; choose one of {', '.join(GOALS)}")
        metrics.append(Metric(str(metric_name), str(goal)))
    if not metrics:
        problems.append("metric: at least one {name, goal}")
    elif len({m.name for m in metrics}) != len(metrics):
        problems.append("metric: each metric at most once")
    return metrics or [Metric("steps_to_generalize", "minimize")]


def _parse_parameters(value: Any, method: str, problems: list[str]) -> dict[str, Param]:
    if not isinstance(value, dict):
        problems.append("parameters: a mapping of config field -> {values | value | distribution, min, max}")
        return {}
    params: dict[str, Param] = {}
    for name, body in value.items():
        where = f"parameters.{name}"
        if name == "seed":
            problems.append(f"{where}: seeds are never searched; list them in the top-level `seeds`")
            continue
        if name not in FIELD_NAMES:
            problems.append(f"{where}: unknown config field{did_you_mean(where.rsplit('.', 1)[-1], FIELD_NAMES)}; "
                            f"known: {', '.join(FIELD_NAMES)}")
            continue
        if not isinstance(body, dict):
            problems.append(f"{where}: a mapping with `values`, `value`, or `distribution` + `min`/`max`")
            continue
        param = _parse_param(name, body, method, where, problems)
        if param is not None:
            params[name] = param
    return params


def _parse_param(name: str, body: dict, method: str, where: str, problems: list[str]) -> Param | None:
    unknown = set(body) - {"values", "value", "distribution", "min", "max"}
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: values, value, "
                        "distribution, min, max")
        return None
    try:
        if "value" in body:
            if set(body) != {"value"}:
                problems.append(f"{where}: `value` (a constant) stands alone")
                return None
            return Param(name, "value", (coerce(name, body["value"]),))
        if "values" in body:
            values = body["values"]
            if set(body) - {"values", "distribution"} or body.get("distribution", "categorical") != "categorical":
                problems.append(f"{where}: `values` stands alone (a grid for grid, categorical otherwise)")
                return None
            if not isinstance(values, list) or not values:
                problems.append(f"{where}.values: a non-empty list, got {values!r}")
                return None
            coerced = tuple(coerce(name, v) for v in values)
            if len(set(coerced)) != len(coerced):
                problems.append(f"{where}.values: each value at most once")
                return None
            return Param(name, "values", coerced)
        if method == "grid":
            problems.append(f"{where}: grid accepts only `values` or `value`; distributions need method random "
                            "or optuna")
            return None
        low, high = body.get("min"), body.get("max")
        distribution = body.get("distribution")
        if distribution is None:  # W&B infers it from the bounds
            distribution = "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
        if distribution not in DISTRIBUTIONS:
            problems.append(f"{where}.distribution: {distribution!r} is not allowed; choose one of "
                            f"{', '.join(DISTRIBUTIONS)} (or `values` for categorical)")
            return None
        if not (_finite(low) and _finite(high)):
            problems.append(f"{where}: {distribution} needs numeric `min` and `max`, got min={low!r} max={high!r}")
            return None
        if not low < high:
            problems.append(f"{where}: min must be < max, got min={low} max={high}")
            return None
        if distribution == "log_uniform_values" and low <= 0:
            problems.append(f"{where}: log_uniform_values needs min > 0, got {low}")
            return None
        field_type = type(coerce(name, 1))
        if distribution == "int_uniform" and (field_type is not int or low != int(low) or high != int(high)):
            problems.append(f"{where}: int_uniform needs an integer field and integer bounds")
            return None
        if distribution != "int_uniform" and field_type is not float:
            problems.append(f"{where}: {distribution} needs a float field; {name} takes {field_type.__name__} "
                            "(use int_uniform or values)")
            return None
        return Param(name, distribution, (), float(low), float(high))
    except ConfigError as error:
        problems.append(f"{where}: {error}")
        return None


def _check_configs(spec: SweepSpec, problems: list[str]) -> None:
    """Every configuration the sweep can run must be a valid TrainConfig (checked before anything runs)."""
    if spec.method == "grid":
        n = math.prod(len(p.values) for p in spec.parameters.values())
        if n * len(spec.seeds) > MAX_GRID_TRIALS:
            problems.append(f"parameters: the grid has {n * len(spec.seeds)} trials; at most {MAX_GRID_TRIALS}")
            return
        candidates = points(spec)
    elif spec.method == "random":
        candidates = points(spec)
    else:  # optuna: the corners of the space, and every categorical value
        constants = points(spec)[0]
        candidates = [constants]
        for p in spec.parameters.values():
            for v in p.values if p.kind == "values" else (p.low, p.high) if p.kind != "value" else ():
                candidates.append({**constants, p.name: coerce(p.name, int(v) if p.kind == "int_uniform" else v)})
    seen: set[str] = set()
    for point in candidates:
        try:
            spec.trial_config(point, spec.seeds[0])
        except ConfigError as error:
            message = str(error)
            if message not in seen:
                seen.add(message)
                where = ", ".join(f"{k}={v}" for k, v in point.items()) or "base"
                problems.append(f"{message} (in the configuration {where})")

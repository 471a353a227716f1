"""The cluster deployment's files (deploy/docker, deploy/helm) cannot run here: no Docker daemon, no
Kubernetes. They are checked statically, with validators from the package registries where one exists
(hadolint for the Dockerfile, the compose-spec schema through check-jsonschema), and against what the
platform itself accepts: the settings they pass load, the instance they name is the PostgreSQL one, the
code location is the project's, and nothing secret is written into them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from kairos_dagster.settings import PROJECT_ROOT, load_settings

DOCKER = PROJECT_ROOT / "deploy" / "docker"
BIN = Path(sys.executable).parent
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|_KEY($|_ID)|TOKEN")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in dockerfile.read_text().splitlines()
                                         if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in text.splitlines() if ln.strip()]


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hadolint"), "--no-color", str(path)], capture_output=True, text=True)


def test_the_dockerfile_passes_hadolint_and_a_flawed_one_does_not(tmp_path):
    out = hadolint(DOCKER / "Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr
    flawed = tmp_path / "Dockerfile"
    flawed.write_text((DOCKER / "Dockerfile").read_text().replace("USER 10001", "USER kairos")
                      .replace("FROM python:3.11-slim-bookworm", "FROM python"))
    out = hadolint(flawed)
    assert out.returncode != 0 and "DL3066" in out.stdout and "DL3006" in out.stdout, out.stdout


def test_the_image_installs_this_project_and_serves_its_code_location():
    steps = instructions(DOCKER / "Dockerfile")
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and kinds.count("FROM") == 1
    python = re.match(r"python:(\d+\.\d+)-", dict(steps)["FROM"])
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert python and f">={python.group(1)}" in project["project"]["requires-python"]
    # every COPY source exists and the build context's ignore file lets it through
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for kind, args in steps:
        if kind == "COPY":
            *sources, _dest = args.split()
            for src in sources:
                assert (PROJECT_ROOT / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/**" in ignore, f"{src} is not in the build context"
    run = " ".join(a for k, a in steps if k == "RUN")
    assert "-e '.[deploy]'" in run and "deploy" in project["project"]["optional-dependencies"]
    assert "dagster-k8s" in " ".join(project["project"]["optional-dependencies"]["deploy"])
    # the instance is the shared one (PostgreSQL), the code location the project's module
    assert "cp deploy/postgres/dagster.yaml \"${DAGSTER_HOME}/dagster.yaml\"" in run
    cmd = yaml.safe_load(dict(steps)["CMD"])
    assert cmd[:4] == ["dagster", "api", "grpc", "-m"] and cmd[4] == project["tool"]["dagster"]["module_name"]
    assert dict(steps)["USER"].isdigit() and dict(steps)["USER"] != "0"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_the_compose_file_is_valid_for_the_compose_spec_and_a_typo_is_not(tmp_path):
    check = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    out = subprocess.run([*check, str(DOCKER / "docker-compose.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    typo = tmp_path / "docker-compose.yml"
    typo.write_text((DOCKER / "docker-compose.yml").read_text().replace("    expose:", "    exposes:"))
    out = subprocess.run([*check, str(typo)], capture_output=True, text=True)
    assert out.returncode != 0 and "'exposes' was unexpected" in out.stdout, out.stdout


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} as an operator who set only the required ones gets it."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}", lambda m: m.group(2) if m.group(2) is not None
                  else f"<{m.group(1)}>", value)


def test_the_compose_services_share_one_image_and_settings_that_load_and_hold_no_secret(tmp_path):
    services = compose()["services"]
    kairos = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("kairos:")}
    assert set(kairos) == {"code", "webserver", "daemon"}
    assert len({s["image"] for s in kairos.values()}) == 1 and "build" in kairos["code"]
    assert kairos["code"]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DOCKER / kairos["code"]["build"]["context"]).resolve() == PROJECT_ROOT.resolve()
    envs = [s["environment"] for s in kairos.values()]
    assert all(e == envs[0] for e in envs)
    env = envs[0]
    for name, value in env.items():  # a secret only ever comes from the operator's environment
        if SECRET_NAMES.search(name):
            assert re.fullmatch(r"\$\{\w+(:[-?][^}]*)?\}", str(value)), f"{name} is written into the file"
    settings = load_settings({k: _interpolate(str(v)) for k, v in env.items()})
    assert settings.lake is not None and settings.lake.data_path == "/data/lake"
    assert settings.executor == "multiprocess" and settings.processes == 2 and settings.data_source == "synthetic"
    # the instance configuration the image holds reads exactly the DAGSTER_PG_* variables given here
    instance_yaml = (PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml").read_text()
    assert set(re.findall(r"env: (DAGSTER_PG_\w+)", instance_yaml)) == {k for k in env if k.startswith("DAGSTER_PG_")}
    # the webserver and the daemon load the code location served by `code`, on the port it serves
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert workspace["host"] == "code"
    assert str(workspace["port"]) == kairos["code"]["command"][kairos["code"]["command"].index("-p") + 1]
    for name in ("webserver", "daemon"):
        command = kairos[name]["command"]
        assert command[command.index("-w") + 1] == "deploy/docker/workspace.yaml"
    # PostgreSQL creates the lake's and Optuna's databases the settings name
    init = (DOCKER / "initdb" / "10-kairos.sql").read_text()
    assert "dbname=kairos_lake" in env["KAIROS_WAREHOUSE"] and "CREATE DATABASE kairos_lake;" in init
    assert env["KAIROS_OPTUNA_STORAGE"].endswith("/optuna") and "CREATE DATABASE optuna;" in init


def test_the_ui_is_reachable_only_through_the_authenticating_proxy():
    services = compose()["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"proxy"}
    caddy = (DOCKER / "Caddyfile").read_text()
    assert re.search(r"basic_auth \{\s*\{\$KAIROS_UI_USER\} \{\$KAIROS_UI_PASSWORD_HASH\}\s*\}", caddy)
    assert "reverse_proxy webserver:3000" in caddy
    assert services["webserver"]["expose"] == ["3000"]
    for var in ("KAIROS_UI_USER", "KAIROS_UI_PASSWORD_HASH"):
        assert ":?" in services["proxy"]["environment"][var]  # compose refuses to start without them


HELM = PROJECT_ROOT / "deploy" / "helm"
JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
              type(None): "null"}


def chart_values() -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
    """deploy/helm/chart-values.txt: {path: {types, enum, closed, k8s}} and the (key, value, required) rules."""
    paths, rules = {}, []
    for line in (HELM / "chart-values.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("when "):
            m = re.fullmatch(r"when (\S+) = (\S+): (\S+)", line)
            rules.append(m.groups())
            continue
        path, types, *flags = line.split("  ")
        enum = next((f[len("enum=["):-1].split(",") for f in flags if f.startswith("enum=")), None)
        paths[path] = {"types": set(types.split("|")), "enum": enum, "closed": "closed" in flags,
                       "k8s": any(f.startswith("(k8s:") for f in flags)}
    return paths, rules


def undocumented(value: object, path: str, doc: dict[str, dict]) -> list[str]:
    """Every key of `value` at `path` that the chart does not document, or documents with another type."""
    spec = doc.get(path)
    if spec is None:
        return [f"{path}: not a value of the chart"]
    kind = "integer" if isinstance(value, int) and not isinstance(value, bool) else JSON_TYPES[type(value)]
    if kind not in spec["types"] and not (kind == "integer" and "number" in spec["types"]):
        return [f"{path}: {kind}, the chart takes {'|'.join(sorted(spec['types']))}"]
    if spec["enum"] and value not in spec["enum"]:
        return [f"{path}: {value!r} is not one of {spec['enum']}"]
    if spec["k8s"]:
        return []  # a Kubernetes object (Volume, EnvVar, ...): the API server checks it
    errors: list[str] = []
    if isinstance(value, dict) and any(p.startswith(path + ".") for p in doc):
        for key, item in value.items():
            errors += undocumented(item, f"{path}.{key}", doc)
    elif isinstance(value, list) and f"{path}[]" in doc:
        for item in value:
            errors += undocumented(item, f"{path}[]", doc)
    return errors


def _at(values: dict, path: str) -> object:
    for key in path.split("."):
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


def helm_values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def test_every_helm_value_is_documented_by_the_chart_and_a_misplaced_one_is_not():
    doc, rules = chart_values()
    values = helm_values()
    errors = [e for key, item in values.items() for e in undocumented(item, key, doc)]
    assert errors == []
    for key, expected, required in rules:  # e.g. a K8sRunLauncher needs config.k8sRunLauncher
        if _at(values, key) == expected:
            assert _at(values, required) is not None, f"{key} = {expected} needs {required}"
    # the check catches what helm would ignore or reject: a typo, a key one level off, a wrong enum
    bad = yaml.safe_load((HELM / "values.yaml").read_text().replace("runK8sConfig:", "runK8sConfg:")
                         .replace("pullPolicy: IfNotPresent", "pullPolicy: Sometimes", 1))
    bad["dagsterWebserver"]["envSecret"] = bad["dagsterWebserver"].pop("envSecrets")
    errors = [e for key, item in bad.items() for e in undocumented(item, key, doc)]
    assert any("runK8sConfg: not a value" in e for e in errors)
    assert any("dagsterWebserver.envSecret: not a value" in e for e in errors)
    assert any("'Sometimes' is not one of" in e for e in errors)


def test_the_helm_deployment_runs_the_one_image_with_the_k8s_launcher_the_k8s_executor_and_no_secret():
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster_k8s import k8s_job_executor

    values = helm_values()
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    (code,) = values["dagster-user-deployments"]["deployments"]
    images = {(v["image"]["repository"], v["image"]["tag"]) for v in
              (values["dagsterWebserver"], values["dagsterDaemon"], code)}
    assert len(images) == 1 and next(iter(images))[1] == project["version"]
    assert code["dagsterApiGrpcArgs"] == ["-m", "kairos_dagster.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    env = {e["name"]: e["value"] for e in code["env"]}
    assert not [k for k in env if SECRET_NAMES.search(k)]  # secrets come from the kairos-secrets Secret
    settings = load_settings(env)
    assert settings.executor == "k8s_job" and settings.processes == 4
    assert settings.lake is not None and settings.lake.data_path.startswith("s3://")
    # every setting of the compose deployment is set here too (the values differ where the services are)
    compose_env = compose()["services"]["code"]["environment"]
    assert {k for k in compose_env if k.startswith("KAIROS_")} <= set(env)
    # run pods and step pods get the secrets and the shared volume; the executor's limit is valid config
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["envSecrets"] == code["envSecrets"] and launcher["volumes"] == code["volumes"]
    assert code["includeConfigInLaunchedRuns"]["enabled"] is True
    assert validate_config(k8s_job_executor.config_schema.config_type, {"max_concurrent": 4}).success
    # the instance's extra configuration is what dagster accepts: the `duckdb` pool above 1 on DuckLake
    extra = values["additionalInstanceConfig"]
    schema = dagster_instance_config_schema()
    for key, item in extra.items():
        assert validate_config(schema[key].config_type, item).success, key
    assert extra["concurrency"]["pools"]["default_limit"] > 1
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP" and values["ingress"]["enabled"]
    assert "auth-url" in " ".join(values["ingress"]["annotations"])
